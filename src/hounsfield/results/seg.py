"""DICOM Segmentation (PS3.3 A.51, Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4), BINARY,
one segment per finding on the source series' geometry, written with highdicom.

Only the source images that contain a segment are referenced as frames (empty frames omitted).
Each segment: label "Nodule n", category Morphologically Abnormal Structure (SCT 49755003),
type Nodule (SCT 27925004), anatomic region Lung, algorithm type AUTOMATIC with the model's
Algorithm Identification (family Artificial Intelligence, DCM 123110), the finding's tracking
identifier and UID, and a Segment Description that says how the outline was found — or that
no boundary was found and the segment is a sphere of the reported diameter.
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from hounsfield.results import codes
from hounsfield.results.equipment import (CONTENT_CREATOR, AIModel, content_label,
                                          contributing_equipment, instance_identity,
                                          series_description)
from hounsfield.results.findings import MeasuredFinding
from hounsfield.results.source import SourceSeries, stamp_time
from hounsfield.results.uids import derive_uid

SERIES_NUMBER = 9001


#: RGB display colours of segments 1, 2, ... (red first: the colour radiologists expect for
#: an AI finding; then distinct hues)
SEGMENT_COLOURS = [(230, 25, 40), (255, 140, 0), (255, 225, 25), (60, 180, 75), (0, 130, 200),
                   (145, 30, 180), (240, 50, 230), (70, 240, 240)]


def segment_description(f: MeasuredFinding) -> str:
    """Segment Description (LO, 64 chars): the outline's origin in words."""
    if f.region.ok:
        text = f"{f.label}: {f.region.reason}" + (" HU" if f.region.threshold is not None else "")
    else:
        text = "no boundary found: sphere of the reported diameter"
    return text[:64]


def build_seg(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
              input_key: str, when: dt.datetime) -> Dataset:
    """The SEG of ``findings`` (at least one) over ``src``."""
    if not findings:
        raise ValueError("a SEG needs at least one finding (no findings: an SR says so)")
    vol = src.volume
    n_seg = len(findings)
    ks = sorted({int(k) for f in findings for k in np.unique(f.region.voxels_kji()[:, 0])})
    rows, cols = vol.shape[1], vol.shape[2]
    pixels = np.zeros((len(ks), rows, cols, n_seg), dtype=bool)
    where = {k: i for i, k in enumerate(ks)}
    for s, f in enumerate(findings):
        kji = f.region.voxels_kji()
        pixels[[where[int(k)] for k in kji[:, 0]], kji[:, 1], kji[:, 2], s] = True
    descriptions = []
    for f in findings:
        d = hd.seg.SegmentDescription(
            segment_number=f.number,
            segment_label=f.label,
            segmented_property_category=codes.CATEGORY,
            segmented_property_type=codes.FINDING,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=model.name, version=model.version, family=codes.AI_FAMILY,
                source=model.manufacturer,
                parameters={"segmentation": f.region.reason[:200],
                            "probability": f"{f.probability:.3f}"}),
            tracking_uid=f.tracking_uid,
            tracking_id=f.label,
            anatomic_regions=[codes.SITE],
            # a display colour per segment (viewers otherwise warn and pick their own)
            display_color=hd.color.CIELabColor.from_rgb(
                *SEGMENT_COLOURS[(f.number - 1) % len(SEGMENT_COLOURS)]),
        )
        d.SegmentDescription = segment_description(f)
        descriptions.append(d)
    seg = hd.seg.Segmentation(
        source_images=[src.slices[k] for k in ks],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **instance_identity(model, input_key, "SEG", SERIES_NUMBER),
        manufacturer_model_name=model.name,
        software_versions=model.software_versions,
        device_serial_number=model.device_uid[-16:],
        content_label=content_label("SEG"),
        content_description=f"AI nodule segmentation by {model.label}, not reviewed"[:64],
        content_creator_name=CONTENT_CREATOR,
        series_description=series_description(model, "nodules SEG"),
        omit_empty_frames=True,
        contributing_equipment=[contributing_equipment(
            model, when, "AI nodule detection; outlines by region growing from each detection")],
    )
    stamp_time(seg, when)
    dim_uid = derive_uid(input_key, model.key, "SEG-dimensions")
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dim_uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = dim_uid
    return seg
