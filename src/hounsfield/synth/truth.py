"""Ground truth of synthetic studies: LUNA16-style CSV, NIfTI label masks, DICOM SEG.

* CSV — one row per nodule: ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (patient
  coordinates, LPS millimetres, as LUNA16's ``annotations.csv``) plus ``nodule_type``,
  ``shape``, ``location``, ``site``, ``label`` (the nodule's value in the mask), ``studyuid``
  and ``patient_id``.
* NIfTI — the instance mask (uint8, 0 background, ``label`` per nodule) with the series'
  geometry (NIfTI's RAS+ affine).
* DICOM SEG — a Segmentation Storage instance (PS3.3 A.51) referencing the CT series, one
  binary segment per nodule (SCT 27925004 "Nodule"), written by highdicom.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hounsfield import __version__
from hounsfield.dicom.uids import derived_uid
from hounsfield.synth.ct import UID_NAMESPACE, CTStudy, NoduleTruth


def write_csv(path: Path | str, records: Iterable[object], fields: tuple[str, ...]) -> int:
    """Write ``records`` (objects with ``.row()``) as CSV with ``fields``; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in records:
            w.writerow(r.row())
            n += 1
    return n


def write_annotations(path: Path | str, truth: Iterable[NoduleTruth]) -> int:
    """The LUNA16-style nodule CSV."""
    return write_csv(path, truth, NoduleTruth.CSV_FIELDS)


def read_annotations(path: Path | str) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def nifti_affine(ct: CTStudy) -> np.ndarray:
    """RAS+ affine of the mask array transposed to ``[x, y, z]`` (LPS -> RAS flips x, y)."""
    a = ct.grid.affine_lps()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def write_mask_nifti(ct: CTStudy, path: Path | str) -> Path:
    """The instance mask as NIfTI-1 (``.nii.gz``), voxel ``[x, y, z]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(ct.mask.transpose(2, 1, 0)), nifti_affine(ct))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"hounsfield synth nodules {ct.series_uid}"[:79].encode()
    nib.save(img, str(path))
    return path


def make_seg(ct: CTStudy) -> Dataset | None:
    """A DICOM SEG of the nodules (one segment each) over ``ct.datasets``; None without any.

    Frames follow the source images' order (instance 1 first); empty frames are omitted.
    """
    if not ct.truth:
        return None
    descriptions = []
    for t in ct.truth:
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=t.label,
            segment_label=f"Nodule {t.label}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="hounsfield synth phantom", version=__version__,
                family=codes.cid7162.ManualProcessing),
            tracking_uid=derived_uid(UID_NAMESPACE, ct.series_uid, "nodule", str(t.label)),
            tracking_id=f"{t.nodule_type} {t.shape} {t.location} {t.diameter_mm:.1f} mm"[:64],
            anatomic_regions=[codes.SCT.Lung],
        ))
    # source images are in instance order = descending z; the mask is ascending z
    labelmap = np.ascontiguousarray(ct.mask[::-1])
    seg = hd.seg.Segmentation(
        source_images=ct.datasets,
        pixel_array=labelmap,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid(UID_NAMESPACE, ct.series_uid, "seg-series"),
        series_number=300,
        sop_instance_uid=derived_uid(UID_NAMESPACE, ct.series_uid, "seg"),
        instance_number=1,
        manufacturer="Hounsfield",
        manufacturer_model_name="hounsfield synth",
        software_versions=__version__,
        device_serial_number="SYNTH-0001",
        content_label="NODULES",
        content_description="Synthetic ground truth nodules",
        series_description="Nodule truth (synthetic)",
        content_creator_name="Hounsfield^Synth",
    )
    _pin_volatile(seg, ct)
    return seg


def _pin_volatile(seg: Dataset, ct: CTStudy) -> None:
    """highdicom stamps the wall-clock time and a random dimension organisation UID; pin them
    to the study's values so that the same seed gives the same bytes (a re-run is a duplicate,
    not a conflict)."""
    when = ct.study.time + ".000000"
    seg.InstanceCreationDate = seg.ContentDate = ct.study.date
    seg.InstanceCreationTime = seg.ContentTime = when
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = ct.study.date + when
    dim_uid = derived_uid(UID_NAMESPACE, ct.series_uid, "seg-dimensions")
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dim_uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = dim_uid
