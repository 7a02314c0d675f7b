"""Key Object Selection Documents (PS3.3 A.35.4, 1.2.840.10008.5.1.4.1.1.88.59, TID 2010),
written with highdicom: the key images of a run, and IOCM rejection notes.

:func:`build_kos` — title (113000, DCM, "Of Interest") from CID 7010, the model as the device
observer, a Key Object Description that says AI and not reviewed, and the key images: the
source slice of each finding (with the presentation state that outlines it nested in the IMAGE
item's Referenced SOP Sequence, so a viewer opens the slice with the outline), then the SC key
images.  No findings: the "No nodule found" key image.

:func:`build_rejection_note` — the IHE IOCM rejection note: a KOS titled (113001, DCM,
"Rejected for Quality Reasons") listing the superseded objects (any SOP class; images as IMAGE
items, the rest as COMPOSITE), in the study of those objects, with each object's series in the
evidence.  A PACS that implements IOCM hides or deletes what it lists; one that does not keeps
it as a document that says which results were withdrawn.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hounsfield.errors import InvalidInput
from hounsfield.results.equipment import (AIModel, contributing_equipment, instance_identity,
                                          series_description)
from hounsfield.results.findings import MeasuredFinding
from hounsfield.results.source import SourceSeries, stamp_time
from hounsfield.results.uids import derive_uid

SERIES_NUMBER = 9005
REJECTION_SERIES_NUMBER = 9009
OF_INTEREST = codes.DCM.OfInterest                            # (113000, DCM, "Of Interest")
REJECTED_FOR_QUALITY = codes.DCM.RejectedForQualityReasons    # (113001, DCM, ...)


def device_observer(model: AIModel) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid, name=model.label[:64], manufacturer_name=model.manufacturer,
            model_name=model.name))


def _nest_presentation_state(kos: Dataset, gsps: Dataset) -> None:
    """Name ``gsps`` inside the IMAGE items of the slices it applies to (PS3.3 C.18.4: the
    Referenced SOP Sequence of an image reference may carry one presentation state)."""
    applies = {str(i.ReferencedSOPInstanceUID)
               for s in gsps.ReferencedSeriesSequence for i in s.ReferencedImageSequence}
    for item in kos.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        ref = item.ReferencedSOPSequence[0]
        if str(ref.ReferencedSOPInstanceUID) in applies:
            ps = Dataset()
            ps.ReferencedSOPClassUID = gsps.SOPClassUID
            ps.ReferencedSOPInstanceUID = gsps.SOPInstanceUID
            ref.ReferencedSOPSequence = [ps]


def _finish(kos: Dataset, model: AIModel, what: str, when: dt.datetime) -> Dataset:
    kos.SeriesDescription = series_description(model, what)
    kos.ManufacturerModelName = model.name
    kos.SoftwareVersions = model.software_versions
    kos.SpecificCharacterSet = "ISO_IR 192"  # our texts and any patient name
    stamp_time(kos, when)
    return kos


def build_kos(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
              input_key: str, when: dt.datetime, key_images: Sequence[Dataset] = (),
              gsps: Dataset | None = None) -> Dataset:
    """The key objects of a run: the findings' source slices and ``key_images`` (the SC
    images); ``gsps`` nested in the slices it outlines.  Needs at least one reference (a
    finding or a key image)."""
    slices = list({str(src.slices[f.slice_k].SOPInstanceUID): src.slices[f.slice_k]
                   for f in findings}.values())
    referenced = slices + list(key_images)
    if not referenced:
        raise InvalidInput("a key object selection needs a finding or a key image to name")
    text = (f"{len(findings)} AI nodule finding(s) by {model.label}: source slices and key "
            "images; AI-generated — not reviewed" if findings else
            f"No nodule found by {model.label}; AI-generated — not reviewed")
    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST, referenced_objects=referenced,
        observer_device_context=device_observer(model), description=text)
    evidence = referenced + ([gsps] if gsps is not None else [])
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence, content=content,
        **instance_identity(model, input_key, "KOS", SERIES_NUMBER),
        contributing_equipment=[contributing_equipment(
            model, when, "AI nodule detection; key images of the findings")])
    if gsps is not None:
        _nest_presentation_state(kos, gsps)
    return _finish(kos, model, "nodules key objects", when)


def rejection_uids(input_key: str, model: AIModel, superseded_uids: Sequence[str]) -> tuple[str, str]:
    """(series, SOP Instance UID) of the rejection note for exactly these superseded objects:
    the same set gives the same note (a retried withdrawal sends a duplicate, not a second
    note)."""
    uids = sorted({str(u) for u in superseded_uids})
    return (derive_uid(input_key, model.key, "series-rejection"),
            derive_uid(input_key, model.key, "rejection", *uids))


def build_rejection_note(superseded: Sequence[Dataset], model: AIModel, *, input_key: str,
                         when: dt.datetime, reason: str = "") -> Dataset:
    """An IOCM rejection note (KOS titled 113001 "Rejected for Quality Reasons") listing
    ``superseded`` — the withdrawn objects' data sets (any SOP class; only their identifying
    attributes are read), all of one study — in that study.

    ``input_key`` and ``model`` are those of the run whose results replace them; ``reason``
    goes into the Key Object Description.  Raises :class:`InvalidInput` for no objects or
    objects of several studies.
    """
    objs = list({str(d.SOPInstanceUID): d for d in superseded}.values())
    if not objs:
        raise InvalidInput("a rejection note needs at least one superseded object")
    studies = {str(d.get("StudyInstanceUID", "")) for d in objs}
    if len(studies) != 1 or "" in studies:
        raise InvalidInput(f"the superseded objects must be of one study, got {sorted(studies)}")
    series_uid, sop_uid = rejection_uids(input_key, model, [d.SOPInstanceUID for d in objs])
    text = (f"{len(objs)} AI result object(s) withdrawn: superseded by a re-run of "
            f"{model.label}" + (f" ({reason})" if reason else ""))[:1024]
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY, referenced_objects=objs,
        observer_device_context=device_observer(model), description=text)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=objs, content=content, series_instance_uid=series_uid,
        series_number=REJECTION_SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=model.manufacturer,
        contributing_equipment=[contributing_equipment(
            model, when, "IOCM rejection note: superseded AI results withdrawn")])
    return _finish(kos, model, "rejection note", when)
