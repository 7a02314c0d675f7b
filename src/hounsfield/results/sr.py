"""Comprehensive 3D SR (PS3.3 A.35.13, 1.2.840.10008.5.1.4.1.1.88.34) with a TID 1500
Measurement Report, written with highdicom.

The observer is the model as a DEVICE (TID 1004: Device Observer UID = the model's Device
UID, name, manufacturer, model name). The report's Qualitative Evaluations (TID 1500 rows
12-14) state the CAD summary (DCM 111017) — "All algorithms succeeded; with findings" (111242)
or "... without findings" (111241) — and the result in words: "no nodule found" is an
explicit result. One TID 1410 Planar ROI measurement group per finding:

* Tracking Identifier "Cornerstone3DTools@^0.1.0:PlanarFreehandROI:Nodule n" (OHIF hydrates a
  group only when its identifier names a Cornerstone tool, notes/ohif-sr.md; the label is after
  the last ':') and Tracking Unique Identifier (the UID by which reviews attach to the finding;
  the same as the SEG segment's Tracking UID);
* Finding (SCT 27925004 Nodule), Finding Site (SCT 39607008 Lung), Algorithm Identification
  (model name and version);
* Image Region: a closed POLYLINE (SCOORD) of the segmentation's outline on the key slice of the
  source series (what viewers such as OHIF draw);
* measurements (TID 300): Area (SCT 42798000, mm2) of the outline, INFERRED FROM the same
  POLYLINE (OHIF takes an annotation's geometry from the first NUM), Long Axis (SCT 103339001,
  mm), Volume (SCT 118565006, mm3), and the model's confidence as Certainty of Finding
  (DCM 111012, {ratio} 0..1);
* extension items (TID 1410 is extensible), after the region: a Comment (DCM 121106, the label
  OHIF shows), Center (DCM 111010) as a SCOORD3D POINT in the frame of reference (the detection
  point), and the Referenced Segment (DCM 121191) of the SEG.

VerificationFlag UNVERIFIED, CompletionFlag COMPLETE.
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes

from hounsfield.imaging.segment import outline
from hounsfield.results import codes
from hounsfield.results.equipment import (AIModel, contributing_equipment, instance_identity,
                                          series_description)
from hounsfield.results.findings import MeasuredFinding
from hounsfield.results.source import SourceSeries, stamp_time

SERIES_NUMBER = 9002
OHIF_TOOL = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"


def observation_context(model: AIModel) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=sr_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid, name=model.label[:64], manufacturer_name=model.manufacturer,
            model_name=model.name)))


def planar_outline(src: SourceSeries, f: MeasuredFinding) -> np.ndarray:
    """The finding's outline on its key slice: ``(n, 2)`` (column, row) pixel coordinates of a
    closed polyline (first point repeated last), the largest loop of the slice's mask."""
    k0 = f.region.box[0].start
    plane = np.zeros(src.volume.shape[1:], dtype=bool)
    j, i = f.region.box[1], f.region.box[2]
    plane[j, i] = f.region.mask[f.slice_k - k0]
    loops = outline(plane)
    return loops[0].astype(np.float32)


def tracking_text(f: MeasuredFinding) -> str:
    """Tracking Identifier text: OHIF's adapter prefix (so OHIF hydrates the group into a
    PlanarFreehandROI annotation; notes/ohif-sr.md) and the finding's label after the last ':'."""
    return f"{OHIF_TOOL}:{f.label}"


def finding_group(src: SourceSeries, f: MeasuredFinding, model: AIModel,
                  seg: Dataset | None) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    image = src.slices[f.slice_k]
    polygon = planar_outline(src, f)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polygon,
        source_image=hd.sr.SourceImageForRegion.from_source_image(image))
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    m = f.measurements
    dx, dy = (float(v) for v in image.PixelSpacing[::-1]) if "PixelSpacing" in image else (1, 1)
    x, y = polygon[:, 0].astype(np.float64), polygon[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) * dx * dy
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=f.tracking_uid,
                                                     identifier=tracking_text(f)),
        referenced_region=region,
        finding_type=codes.FINDING,
        finding_category=codes.CATEGORY,
        finding_sites=[hd.sr.FindingSite(codes.SITE)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.AREA, value=round(area, 2), unit=codes.MM2),
            hd.sr.Measurement(name=codes.LONG_AXIS, value=round(m.long_axis_mm, 2),
                              unit=codes.MM, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.VOLUME, value=round(m.volume_mm3, 1),
                              unit=codes.MM3, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.CERTAINTY, value=round(f.probability, 4),
                              unit=codes.RATIO, algorithm_id=algorithm),
        ],
    )
    items = group[0].ContentSequence
    # the first NUM (Area) is INFERRED FROM the outline (TID 300 row 8, TID 320): OHIF takes an
    # annotation's geometry from there; highdicom's TID 1410 class refuses the argument, so
    # the item is added here
    first_num = next(it for it in items if it.ValueType == "NUM")
    first_num.ContentSequence = list(first_num.get("ContentSequence", [])) + [
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polygon,
            source_image=hd.sr.SourceImageForRegion.from_source_image(image))]
    # extension items after the region (TID 1410 is extensible; OHIF draws the first SCOORD)
    items.append(hd.sr.TextContentItem(
        name=codes.COMMENT, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        value=f"{f.label}, {m.long_axis_mm:.1f} mm, p={f.probability:.2f} (AI, unreviewed)"
              + ("" if f.region.ok else "; no boundary found: sphere of the reported diameter")))
    items.append(hd.sr.Scoord3DContentItem(
        name=codes.CENTER, graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([f.centre], dtype=np.float32),
        frame_of_reference_uid=str(image.FrameOfReferenceUID),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if seg is not None:
        items.extend(referenced_segment(seg, f, src))
    return group


def referenced_segment(seg: Dataset, f: MeasuredFinding, src: SourceSeries) -> hd.sr.ReferencedSegment:
    """TID 1411's Referenced Segment (DCM 121191) with the source slices the segment lies on.

    Built here, not with highdicom's ``ReferencedSegment.from_segmentation``: that reads the
    segment number from each frame's Segment Identification, which a SEG of a single segment
    keeps in the Shared Functional Groups instead (it raised AttributeError on every finding of
    a one-nodule study)."""
    ks = sorted({int(k) for k in f.region.voxels_kji()[:, 0]})
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=f.number,
        source_images=[hd.sr.SourceImageForSegmentation.from_source_image(src.slices[k])
                       for k in ks])


def qualitative_evaluations(summary, findings: list[MeasuredFinding],  # noqa: ANN001
                            model: AIModel) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the Qualitative Evaluations container with the CAD summary (CODE)
    and the result in words (TEXT) — for "no findings": "No nodule found by <model>"."""
    text = (f"{len(findings)} nodule(s) found by {model.label}" if findings
            else f"No nodule found by {model.label}")
    box = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    box.ContentSequence = [
        hd.sr.CodeContentItem(name=codes.SUMMARY, value=summary,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(name=sr_codes.DCM.Finding, value=text,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
    ]
    return box


def build_sr(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
             input_key: str, when: dt.datetime, seg: Dataset | None = None) -> Dataset:
    """The TID 1500 report of ``findings`` (none: a report that says no nodule was found).
    ``seg`` is the SEG of the same findings, referenced segment by segment when given."""
    summary = codes.WITH_FINDINGS if findings else codes.WITHOUT_FINDINGS
    groups = [finding_group(src, f, model, seg) for f in findings]
    placeholder = [] if groups else [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="none"))]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=groups or placeholder,
        referenced_images=None if findings else [src.slices[len(src.slices) // 2]],
    )
    if not groups:
        # TID 1500 row 6 (Imaging Measurements) is needed only without rows 8/10: with no
        # finding the report is its Qualitative Evaluations; highdicom insists on a group, so
        # its placeholder container is taken out again
        root = report[0].ContentSequence
        keep = [it for it in root if not (it.ValueType == "CONTAINER" and
                it.ConceptNameCodeSequence[0].CodeValue == "126010")]
        report[0].ContentSequence = keep
    report[0].ContentSequence.append(qualitative_evaluations(summary, findings, model))
    evidence = [src.slices[f.slice_k] for f in findings] or [src.slices[len(src.slices) // 2]]
    if seg is not None and findings:  # the segments reference their source images too
        ks = sorted({int(k) for f in findings for k in set(f.region.voxels_kji()[:, 0])})
        evidence += [src.slices[k] for k in ks] + [seg]
    unique = list({str(ds.SOPInstanceUID): ds for ds in evidence}.values())
    sr = hd.sr.Comprehensive3DSR(
        evidence=unique,
        content=report,
        **instance_identity(model, input_key, "SR", SERIES_NUMBER),
        is_complete=True, is_final=False, is_verified=False,
        series_description=series_description(model, "nodules SR"),
        contributing_equipment=[contributing_equipment(
            model, when, "AI nodule detection and measurement")],
    )
    sr.ManufacturerModelName = model.name
    sr.SoftwareVersions = model.software_versions
    stamp_time(sr, when)
    return sr


def set_predecessors(sr: Dataset, refs, study_uid: str) -> int:  # noqa: ANN001
    """Name the SRs among ``refs`` (result references: ``kind``, ``sop_instance_uid``,
    ``series_instance_uid``, ``sop_class_uid``, optionally ``study_instance_uid``) as the
    predecessors of ``sr`` (SR Document General module, Predecessor Documents Sequence: the
    documents this one replaces, grouped by study and series).  Returns how many it named."""
    by_study: dict[str, dict[str, list[Dataset]]] = {}
    n = 0
    for r in refs:
        if str(r.get("kind", "")).split("-")[0] != "SR" or \
                str(r["sop_instance_uid"]) == str(sr.SOPInstanceUID):
            continue
        item = Dataset()
        item.ReferencedSOPClassUID = str(r["sop_class_uid"])
        item.ReferencedSOPInstanceUID = str(r["sop_instance_uid"])
        study = str(r.get("study_instance_uid") or study_uid)
        by_study.setdefault(study, {}).setdefault(str(r["series_instance_uid"]), []).append(item)
        n += 1
    if not n:
        return 0
    seq = []
    for study, series in by_study.items():
        st = Dataset()
        st.StudyInstanceUID = study
        st.ReferencedSeriesSequence = []
        for series_uid, items in series.items():
            se = Dataset()
            se.SeriesInstanceUID = series_uid
            se.ReferencedSOPSequence = items
            st.ReferencedSeriesSequence.append(se)
        seq.append(st)
    sr.PredecessorDocumentsSequence = seq
    return n
