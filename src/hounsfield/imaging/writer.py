"""Volume -> a DICOM series of single-frame CT or MR images (PS3.3 A.3 CT Image IOD, A.4 MR).

Written strictly: every module the IOD requires is present (Patient, General Study, General
Series, Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel, CT/MR
Image, SOP Common), the tests run dciodvfy on the output.  Voxel values are stored as signed
16-bit with Rescale Slope/Intercept chosen so the values round-trip within one quantisation step
(exactly, when the volume holds integers that fit 16 bits).  UIDs are derived from ``uid_seed``
so converting the same input twice gives the same objects (idempotent import).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import format_number_as_ds

from hounsfield import __version__
from hounsfield.dicom.uids import derived_uid
from hounsfield.imaging.volume import Volume

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


@dataclass
class SeriesInfo:
    """Who and what the written series is about (a named patient and study)."""

    patient_name: str
    patient_id: str
    modality: str = "CT"
    uid_seed: str = ""
    study_description: str = ""
    series_description: str = ""
    series_number: int = 1
    study_date: str = ""
    manufacturer: str = "Hounsfield"


def _ds(value: float) -> str:
    return format_number_as_ds(float(value)) if np.isfinite(value) else "0"


def quantise(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored int16, slope, intercept)`` with ``stored * slope + intercept ~= array``."""
    a = np.asarray(array)
    if a.size == 0:
        return a.astype(np.int16), 1.0, 0.0
    lo, hi = float(np.min(a)), float(np.max(a))
    if a.dtype.kind in "iub" or np.all(np.mod(a, 1) == 0):
        if -32768 <= lo and hi <= 32767:
            return a.astype(np.int16), 1.0, 0.0
    intercept = float(format_number_as_ds((lo + hi) / 2))
    slope = float(format_number_as_ds(max(hi - lo, 1e-12) / 65000))
    stored = np.clip(np.rint((a.astype(np.float64) - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope, intercept


def volume_to_datasets(vol: Volume, info: SeriesInfo) -> list[FileDataset]:
    """One single-frame instance per slice, geometry from the volume's affine."""
    modality = info.modality.upper()
    if modality not in SOP_CLASS:
        raise ValueError(f"can write CT or MR series, not {modality!r}")
    seed = info.uid_seed or derived_uid(info.patient_id, info.series_description, str(vol.shape))
    study_uid = derived_uid("study", seed)
    series_uid = derived_uid("series", seed)
    for_uid = derived_uid("frame-of-reference", seed)
    date = info.study_date  # empty unless known: the same input must give the same bytes
    stored, slope, intercept = quantise(vol.array)
    row, col, normal = vol.direction[:, 0], vol.direction[:, 1], vol.direction[:, 2]
    si, sj, sk = vol.spacing
    out: list[FileDataset] = []
    for k in range(vol.shape[0]):
        sop_uid = derived_uid("instance", seed, str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"HOUNSFIELD_{__version__}"[:16]
        ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = SOP_CLASS[modality]
        ds.SOPInstanceUID = sop_uid
        # Patient / General Study
        ds.PatientName = info.patient_name
        ds.PatientID = info.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = date
        ds.StudyTime = "000000" if date else ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        if info.study_description:
            ds.StudyDescription = info.study_description[:64]
        # General Series / Frame of Reference / General Equipment
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = info.series_number
        if info.series_description:
            ds.SeriesDescription = info.series_description[:64]
        ds.PatientPosition = ""
        ds.Laterality = ""
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = info.manufacturer
        ds.SoftwareVersions = __version__
        # General Image / Image Plane
        ds.InstanceNumber = k + 1
        ds.PatientOrientation = ""
        ds.ContentDate = date
        ds.ContentTime = "000000" if date else ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if modality == "CT" else ["DERIVED", "SECONDARY", "OTHER"]
        pos = vol.world((0.0, 0.0, float(k)))
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(sj), _ds(si)]
        ds.SliceThickness = _ds(sk)
        ds.SliceLocation = _ds(float(pos @ normal))
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        if modality == "CT":
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "HU"
            ds.KVP = ""
            ds.AcquisitionNumber = ""
        else:
            ds.ScanningSequence = "RM"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = ""
            ds.EchoTime = ""
            ds.EchoTrainLength = ""
            ds.SpacingBetweenSlices = _ds(sk)
            if slope != 1.0 or intercept != 0.0:  # MR has no Modality LUT; store real values
                ds.RealWorldValueMappingSequence = [_rwvm(slope, intercept)]
                ds.RescaleIntercept = _ds(intercept)
                ds.RescaleSlope = _ds(slope)
                ds.RescaleType = "US"
        out.append(ds)
    return out


def _rwvm(slope: float, intercept: float) -> Dataset:
    item = Dataset()
    item.RealWorldValueFirstValueMapped = -32768
    item.RealWorldValueLastValueMapped = 32767
    item.RealWorldValueIntercept = intercept
    item.RealWorldValueSlope = slope
    item.LUTExplanation = "stored value to original research-format value"
    item.LUTLabel = "ORIGINAL"
    unit = Dataset()
    unit.CodeValue = "1"
    unit.CodingSchemeDesignator = "UCUM"
    unit.CodeMeaning = "no units"
    item.MeasurementUnitsCodeSequence = [unit]
    return item


def to_part10(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
