"""AI results as standard DICOM objects: SEG, Comprehensive 3D SR (TID 1500), SC key images,
a Grayscale Softcopy Presentation State, a Key Object Selection and an Encapsulated PDF.

The clinical pipeline calls only :func:`build_results`::

    from hounsfield.results import AIModel, build_results
    rs = build_results(datasets, volume, findings, AIModel("nodules", "3", device_uid),
                       input_key=series_content_key(pairs), profile_kinds={"SEG", "SR"})
    for obj in rs.objects: send(obj.dataset)

Every object carries the model as Contributing Equipment (IHE AI Results), a series
description that says AI and unreviewed, and UIDs derived from (input series content, model,
object kind): the same input and model give the same UIDs. The Study Instance UID is the
source study's. No findings is an explicit result (an SR saying so, a "No nodule found" key
image), never silence; a SEG (and a GSPS) is made only when there is something to outline.

A re-run that replaces an earlier job's results passes that job's result references as
``predecessors``: the new SR names the old SR(s) in its Predecessor Documents Sequence (the
only result IOD whose standard has such a reference; withdrawing the old objects from a PACS is
an IOCM rejection note, :func:`hounsfield.results.kos.build_rejection_note`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from hounsfield.errors import InvalidInput
from hounsfield.imaging.volume import Volume
from hounsfield.results.equipment import AIModel
from hounsfield.results.findings import MeasuredFinding, measure_findings
from hounsfield.results.gsps import build_gsps
from hounsfield.results.kos import build_kos, build_rejection_note
from hounsfield.results.pdf import build_pdf
from hounsfield.results.sc import build_key_images
from hounsfield.results.seg import build_seg
from hounsfield.results.source import SourceSeries
from hounsfield.results.sr import build_sr, set_predecessors
from hounsfield.results.uids import derive_uid, series_content_key

from hounsfield.config import OUTPUT_PROFILES, RESULT_KINDS

KINDS = frozenset(RESULT_KINDS)
PROFILES = dict(OUTPUT_PROFILES)


@dataclass(frozen=True)
class ResultObject:
    """One result instance: ``kind`` "SEG" | "SR" | "SC" | "GSPS" | "KOS" | "PDF" and its
    pydicom ``dataset``."""

    kind: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


@dataclass(frozen=True)
class FindingResult:
    """What the objects say about one finding (for the job log, the API and later reviews)."""

    number: int
    label: str
    tracking_uid: str
    x_mm: float
    y_mm: float
    z_mm: float
    reported_diameter_mm: float
    probability: float
    long_axis_mm: float
    volume_mm3: float
    boundary_found: bool
    segmentation_note: str
    key_image_sop_instance_uid: str | None = None
    source_sop_instance_uid: str = ""


@dataclass
class ResultSet:
    """The result objects of one run, in the order to send them — referenced objects before
    the objects that reference them: SEG, SR (names the SEG), SC, GSPS, PDF, KOS (names the
    SC and the GSPS) — with the per-finding measurements."""

    objects: list[ResultObject] = field(default_factory=list)
    findings: list[FindingResult] = field(default_factory=list)
    study_instance_uid: str = ""
    input_key: str = ""
    model_key: str = ""

    def of_kind(self, kind: str) -> list[Dataset]:
        return [o.dataset for o in self.objects if o.kind == kind]

    @property
    def datasets(self) -> list[Dataset]:
        return [o.dataset for o in self.objects]

    @property
    def no_findings(self) -> bool:
        return not self.findings


def _kinds(profile_kinds: Iterable[str] | str) -> frozenset[str]:
    if isinstance(profile_kinds, str):
        if profile_kinds not in PROFILES:
            raise InvalidInput(f"unknown output profile {profile_kinds!r}; "
                               f"choose one of {sorted(PROFILES)}")
        return PROFILES[profile_kinds]
    kinds = frozenset(str(k).upper() for k in profile_kinds)
    unknown = kinds - KINDS
    if unknown or not kinds:
        raise InvalidInput(f"result kinds must be a non-empty subset of {sorted(KINDS)}, "
                           f"got {sorted(kinds)}")
    return kinds


def build_results(series_datasets: Sequence[Dataset], volume: Volume, findings: Sequence[Any],
                  model: AIModel, *, input_key: str,
                  profile_kinds: Iterable[str] | str = KINDS,
                  created: dt.datetime | None = None,
                  predecessors: Sequence[Mapping[str, str]] = ()) -> ResultSet:
    """Build the result objects of ``findings`` on one source series.

    ``series_datasets`` — the series' data sets with pixel data (every slice of ``volume``);
    ``volume`` — its :class:`~hounsfield.imaging.Volume`; ``findings`` — duck-typed objects with
    ``x_mm, y_mm, z_mm`` (LPS mm), ``diameter_mm``, ``probability``; ``input_key`` —
    :func:`~hounsfield.results.uids.series_content_key` of the series; ``profile_kinds`` — the
    kinds to make (a subset of {"SEG", "SR", "SC", "GSPS", "KOS", "PDF"} or a profile name:
    "ai-ready", "legacy", "all"); ``created`` — the job's time, stamped as content/series date
    and time (default: now), so a re-run with the same job time writes identical objects;
    ``predecessors`` — the result references (``kind``, ``sop_instance_uid``,
    ``series_instance_uid``, ``sop_class_uid``, optionally ``study_instance_uid``) of the
    earlier job these results replace: its SRs become the new SR's predecessor documents.

    Raises :class:`~hounsfield.errors.InvalidInput` for a bad finding (a centre outside the
    volume, a non-positive diameter, a probability outside 0..1), data sets that do not match
    the volume, or an unknown kind.
    """
    kinds = _kinds(profile_kinds)
    if not isinstance(model, AIModel):
        raise InvalidInput(f"model must be a results.AIModel, got {type(model).__name__}")
    if not isinstance(input_key, str) or not input_key:
        raise InvalidInput("input_key must be the series content key (a non-empty string)")
    when = created or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    src = SourceSeries.of(list(series_datasets), volume)
    measured = measure_findings(volume, list(findings), model, input_key=input_key)
    rs = ResultSet(study_instance_uid=str(src.first.StudyInstanceUID), input_key=input_key,
                   model_key=model.key)
    seg = None
    if measured and "SEG" in kinds:
        seg = build_seg(src, measured, model, input_key=input_key, when=when)
        rs.objects.append(ResultObject("SEG", seg))
    if "SR" in kinds:
        rs.objects.append(ResultObject("SR", build_sr(src, measured, model, input_key=input_key,
                                                      when=when, seg=seg)))
    if predecessors and "SR" in kinds:
        set_predecessors(rs.of_kind("SR")[0], predecessors, rs.study_instance_uid)
    key_images: dict[int, str] = {}
    scs = []
    if "SC" in kinds:
        scs = build_key_images(src, measured, model, input_key=input_key, when=when)
        for ds in scs:
            rs.objects.append(ResultObject("SC", ds))
            key_images[int(ds.InstanceNumber)] = str(ds.SOPInstanceUID)
    gsps = None
    if measured and "GSPS" in kinds:
        gsps = build_gsps(src, measured, model, input_key=input_key, when=when)
        rs.objects.append(ResultObject("GSPS", gsps))
    if "PDF" in kinds:
        rs.objects.append(ResultObject("PDF", build_pdf(src, measured, model,
                                                        input_key=input_key, when=when)))
    if "KOS" in kinds and (measured or scs):
        rs.objects.append(ResultObject("KOS", build_kos(
            src, measured, model, input_key=input_key, when=when, key_images=scs, gsps=gsps)))
    rs.findings = [_finding_result(src, f, key_images.get(f.number)) for f in measured]
    for obj in rs.objects:
        # our texts ("AI nodules SEG — ...", "AI-generated — not reviewed") and the patient's
        # names in any source character set are written as UTF-8
        obj.dataset.SpecificCharacterSet = "ISO_IR 192"
    return rs


def _finding_result(src: SourceSeries, f: MeasuredFinding, key_image: str | None) -> FindingResult:
    return FindingResult(
        number=f.number, label=f.label, tracking_uid=f.tracking_uid,
        x_mm=float(f.centre[0]), y_mm=float(f.centre[1]), z_mm=float(f.centre[2]),
        reported_diameter_mm=f.diameter_mm, probability=f.probability,
        long_axis_mm=round(f.measurements.long_axis_mm, 2),
        volume_mm3=round(f.measurements.volume_mm3, 1),
        boundary_found=f.region.ok, segmentation_note=f.region.reason,
        key_image_sop_instance_uid=key_image,
        source_sop_instance_uid=str(src.slices[f.slice_k].SOPInstanceUID))


__all__ = ["AIModel", "FindingResult", "KINDS", "PROFILES", "ResultObject", "ResultSet",
           "build_rejection_note", "build_results", "derive_uid", "series_content_key"]
