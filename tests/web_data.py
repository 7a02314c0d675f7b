"""Small synthetic test data for the web/DICOMweb suites: a CT series (a bright sphere in a
water cylinder, so a rendered slice is far from blank) and a highdicom SEG of the sphere."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from hounsfield.dicom.uids import derived_uid


def ct_volume(n: int, size: int) -> np.ndarray:
    z, y, x = np.mgrid[0:n, 0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    vol = np.full((n, size, size), -1000, dtype=np.int16)  # air
    vol[((y - c) ** 2 + (x - c) ** 2) < (0.45 * size) ** 2] = 0  # water cylinder
    r = 0.22 * size
    vol[((z - (n - 1) / 2) ** 2 * (size / max(n, 1)) ** 2 + (y - c) ** 2 + (x - c) ** 2) < r * r] = 800
    return vol


def ct_series(n: int = 5, size: int = 64, *, seed: str = "ct", patient: str = "DOE^JANE",
              patient_id: str = "P001", study_date: str = "20240102",
              accession: str = "ACC001", description: str = "CT CHEST") -> list[Dataset]:
    """``n`` axial CT slices (``size`` x ``size``, int16 HU stored as unsigned + rescale)."""
    study = derived_uid(seed, "study")
    series = derived_uid(seed, "series")
    frame = derived_uid(seed, "for")
    vol = ct_volume(n, size)
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = derived_uid(seed, "sop", str(i))
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.PatientName = patient
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyDate = study_date
        ds.StudyTime = "101500"
        ds.SeriesDate = study_date
        ds.SeriesTime = "101600"
        ds.ContentDate = study_date
        ds.ContentTime = "101700"
        ds.AccessionNumber = accession
        ds.StudyID = "1"
        ds.StudyDescription = description
        ds.SeriesDescription = "AXIAL"
        ds.ReferringPhysicianName = "WHO^DR"
        ds.Modality = "CT"
        ds.Manufacturer = "Hounsfield synthetic"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-(size / 2), -(size / 2), float(i * 2.0)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = vol[i].tobytes()
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seg_of(cts: list[Dataset]) -> Dataset:
    """A highdicom binary SEG of the bright sphere (HU > 400) over ``cts``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.stack([ds.pixel_array > 400 for ds in cts]).astype(np.uint8)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="sphere",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seed = cts[0].SeriesInstanceUID
    return hd.seg.Segmentation(
        source_images=cts, pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=derived_uid(seed, "seg-series"),
        series_number=2, sop_instance_uid=derived_uid(seed, "seg"), instance_number=1,
        manufacturer="Hounsfield", manufacturer_model_name="test",
        software_versions="0", device_serial_number="1",
        content_date=datetime(2024, 1, 2).date(), content_time=datetime(2024, 1, 2).time(),
    )


def reread(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def sr_of(cts: list[Dataset]) -> Dataset:
    """A TID 1500 measurement report (highdicom Comprehensive 3D SR): a closed polyline ROI
    around the sphere on the middle slice, with its area — written so that OHIF hydrates it
    into a real measurement (docs/howto/viewer.md, "SR display rules"): a TID 1501 group whose
    Tracking Identifier names OHIF's PlanarFreehandROI tool, and whose first NUM (Area) holds
    the polyline as its INFERRED FROM coordinates (OHIF's hydrator reads the geometry there)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ref = cts[len(cts) // 2]
    size = int(ref.Rows)
    c, r = size / 2, 0.22 * size
    angles = np.linspace(0, 2 * np.pi, 9)
    points = np.stack([c + r * np.cos(angles), c + r * np.sin(angles)], axis=1).astype(np.float32)
    points[-1] = points[0]  # closed: OHIF's PlanarFreehandROI compares first and last point
    dy, dx = (float(v) for v in ref.PixelSpacing)  # row spacing, column spacing
    x, y = points[:, 0] * dx, points[:, 1] * dy
    area = 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))  # the polygon's mm2
    outline = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points,
        source_image=hd.sr.SourceImageForRegion.from_source_image(ref))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(  # TID 1501
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(ref.SOPInstanceUID, "tracking"),
            identifier="Cornerstone3DTools@^0.1.0:PlanarFreehandROI:sphere ROI"),
        finding_type=codes.SCT.Lesion,
        measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=round(area, 2),
                                        unit=codes.UCUM.SquareMillimeter,
                                        referenced_coordinates=[outline])])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name="WHO^DR"))),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group])
    seed = ref.SeriesInstanceUID
    return hd.sr.Comprehensive3DSR(
        evidence=[ref], content=report, series_number=3,
        series_instance_uid=derived_uid(seed, "sr-series"),
        sop_instance_uid=derived_uid(seed, "sr"), instance_number=1,
        manufacturer="Hounsfield", series_description="Measurements")
