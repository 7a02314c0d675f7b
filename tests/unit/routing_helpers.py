"""Studies for the routing tests: real CT headers (tests/web_data.ct_series, hounsfield.synth,
pydicom's CT_small) stored in a temporary archive, some of them bent into what a modality also
sends — a localizer, a thick reformat, a dose SR, a secondary capture, a series with a missing
slice, a series in two orientations."""

from __future__ import annotations

import copy

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.dicom.uids import derived_uid
from tests.web_data import ct_series, to_bytes

STUDY = derived_uid("routing", "study")
SCANNER = "CT_SCANNER@10.1.2.3"


def store(archive, datasets: list[Dataset], *, source: str = SCANNER, site: str | None = None) -> None:
    store_instances(archive, [parse_part10(to_bytes(ds)) for ds in datasets], source=source,
                    site=site)


def ct(seed: str, number: int, *, n: int = 8, step: float = 2.0, thickness: float | None = None,
       description: str = "AXIAL", image_type=("ORIGINAL", "PRIMARY", "AXIAL"), kernel: str = "B31f",
       study: str = STUDY, size: int = 16, **attrs) -> list[Dataset]:
    """An axial CT series of ``n`` slices ``step`` mm apart in study ``study``."""
    dss = ct_series(n, size, seed=seed)
    for i, ds in enumerate(dss):
        ds.StudyInstanceUID = study
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.ConvolutionKernel = kernel
        ds.SliceThickness = thickness if thickness is not None else step
        ds.ImagePositionPatient = [-(size / 2), -(size / 2), float(i * step)]
        for k, v in attrs.items():
            setattr(ds, k, v)
    return dss


def localizer(seed: str = "loc", number: int = 1) -> list[Dataset]:
    """Two coronal/sagittal topograms flagged LOCALIZER."""
    dss = ct(seed, number, n=2, description="Topogram 0.6 T20f",
             image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    dss[0].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    dss[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    return dss


def three_plane(seed: str = "3pl", number: int = 9) -> list[Dataset]:
    """Three images in three orientations, not flagged LOCALIZER (what some scanners send)."""
    dss = ct(seed, number, n=3, description="3 plane", image_type=("ORIGINAL", "PRIMARY", "AXIAL"))
    dss[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    dss[2].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    return dss


def reformat(seed: str = "mpr", number: int = 5) -> list[Dataset]:
    """A 5 mm axial MPR (DERIVED\\SECONDARY\\MPR)."""
    return ct(seed, number, n=6, step=5.0, description="Ax 5mm MPR",
              image_type=("DERIVED", "SECONDARY", "MPR"))


def missing_slice(seed: str = "gap", number: int = 4) -> list[Dataset]:
    """Eight 2 mm slices with the one at z = 8 mm left out."""
    dss = ct(seed, number, n=8)
    return [ds for ds in dss if float(ds.ImagePositionPatient[2]) != 8.0]


def mixed_orientations(seed: str = "mix", number: int = 6) -> list[Dataset]:
    """Eight slices: four axial, four coronal (one series)."""
    dss = ct(seed, number, n=8)
    for i, ds in enumerate(dss[4:]):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-8.0, float(i * 2.0), 8.0]
    return dss


def _non_image(sop_class: str, modality: str, seed: str, number: int, description: str,
               template: Dataset) -> Dataset:
    ds = Dataset()
    sop = derived_uid(seed, "sop")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "AccessionNumber", "StudyID", "StudyDescription"):
        setattr(ds, kw, getattr(template, kw))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = template.StudyInstanceUID
    ds.SeriesInstanceUID = derived_uid(seed, "series")
    ds.Modality = modality
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.SeriesDescription = description
    return ds


def dose_sr(template: Dataset, number: int = 997) -> Dataset:
    """An X-Ray Radiation Dose SR (TID 10001 root container only)."""
    ds = _non_image("1.2.840.10008.5.1.4.1.1.88.67", "SR", "dose", number, "Dose Report",
                    template)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "113701", "DCM"
    concept.CodeMeaning = "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = [concept]
    return ds


def secondary_capture(template: Dataset, number: int = 998, description: str = "Patient Protocol") -> Dataset:
    """An RGB Secondary Capture (what scanners send as a dose or protocol screen)."""
    ds = _non_image("1.2.840.10008.5.1.4.1.1.7", "OT", "sc" + description, number, description,
                    template)
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((8, 8, 3), np.uint8).tobytes()
    return ds


def clone(dss: list[Dataset], seed: str, number: int, study: str = STUDY) -> list[Dataset]:
    """A copy of a series under new UIDs and number (in ``study``)."""
    out = []
    for i, ds in enumerate(dss):
        c = copy.deepcopy(ds)
        c.StudyInstanceUID = study
        c.SeriesInstanceUID = derived_uid(seed, "series")
        c.SOPInstanceUID = c.file_meta.MediaStorageSOPInstanceUID = derived_uid(seed, "sop", str(i))
        c.SeriesNumber = number
        out.append(c)
    return out
