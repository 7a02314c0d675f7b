"""Synthetic chest CT series: a phantom rendered on a site's grid, degraded by its scanner,
written as CT Image Storage instances (PS3.3 A.3) with the site's header habits.

Instance 1 is the most superior slice (a head-first scan runs cranio-caudally); the volume
arrays are indexed ``[z, y, x]`` with z increasing (slice 0 = most inferior).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from hounsfield import __version__
from hounsfield.dicom.uids import derived_uid
from hounsfield.errors import InvalidInput
from hounsfield.synth.grid import Grid
from hounsfield.synth.names import PatientInfo, StudyInfo, make_patient, make_study, parse_date
from hounsfield.synth.phantom import Phantom, make_phantom, render
from hounsfield.synth.scanner import apply_scanner, stored_to_hu
from hounsfield.synth.sites import SiteProfile, resolve_site

IMPLEMENTATION_CLASS_UID = "2.25.230283398127396584003117155012856421931"
IMPLEMENTATION_VERSION = f"HOUNSFIELD_{__version__}"[:16]
UID_NAMESPACE = "hounsfield-synth"


@dataclass
class NoduleTruth:
    """One nodule's ground truth, LUNA16 style (coordinates in patient mm, LPS)."""

    seriesuid: str
    coordX: float
    coordY: float
    coordZ: float
    diameter_mm: float
    nodule_type: str
    shape: str
    location: str
    site: str
    label: int                 # value of this nodule in the mask
    studyuid: str = ""
    patient_id: str = ""

    CSV_FIELDS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "nodule_type",
                  "shape", "location", "site", "label", "studyuid", "patient_id")

    def row(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in ((f, getattr(self, f)) for f in self.CSV_FIELDS)}


@dataclass
class CTStudy:
    """One generated CT study (one series) with its truth.

    ``datasets`` — CT Image Storage data sets, instance 1 first; ``truth`` — one record per
    nodule; ``mask`` — uint8 ``[z, y, x]``, 0 background, ``truth[i].label`` for nodule i;
    ``pixels`` — stored values ``[z, y, x]``; ``tissue`` — tissue labels when requested.
    """

    site: SiteProfile
    seed: int
    grid: Grid
    datasets: list[Dataset]
    truth: list[NoduleTruth]
    mask: np.ndarray
    pixels: np.ndarray
    patient: PatientInfo
    study: StudyInfo
    phantom: Phantom
    study_uid: str
    series_uid: str
    frame_uid: str
    tissue: np.ndarray | None = None

    def hu(self) -> np.ndarray:
        """The stored pixels as HU (Modality LUT applied), float32 ``[z, y, x]``."""
        return stored_to_hu(self.pixels, self.site)

    def part10(self) -> list[bytes]:
        """Each data set as Part 10 file bytes (PS3.10 §7), in instance order."""
        return [to_part10(ds) for ds in self.datasets]


def to_part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def study_seeds(seed: int) -> tuple[np.random.SeedSequence, np.random.Generator, np.random.Generator]:
    """(phantom seed, scanner-noise generator, header generator) from one study seed."""
    ss = np.random.SeedSequence(seed)
    ph, noise, head = ss.spawn(3)
    return ph, np.random.default_rng(noise), np.random.default_rng(head)


def ct_grid(site: SiteProfile, phantom: Phantom, *, rows: int, cols: int,
            slices: int | None) -> Grid:
    """The reconstruction grid: the site's FOV across ``cols`` pixels, centred near the
    isocentre, covering the phantom's scan range with the site's (or a derived) spacing."""
    p = site.fov_mm / cols
    length = phantom.body.length
    if slices is None:
        dz = site.slice_spacing_mm
        slices = max(int(round(length / dz)), 1)
    else:
        dz = length / slices
    x0 = -p * (cols - 1) / 2
    y0 = 15.0 - p * (rows - 1) / 2
    return Grid((round(x0, 4), round(y0, 4), round(phantom.offset[2] + dz / 2, 4)),
                (p, p, dz), (slices, rows, cols))


def generate_ct(site: str | SiteProfile, seed: int, *, shape: tuple[int, int, int] | None = None,
                matrix: int = 512, slices: int | None = None, nodules: int | None = None,
                detail: float = 1.0, patient_index: int = 0, tissue: bool = False) -> CTStudy:
    """Generate one chest CT study for ``site`` from ``seed`` (same inputs -> same pixels).

    ``shape = (slices, rows, cols)`` sets the matrix exactly (small ones for tests); otherwise
    ``matrix`` x ``matrix`` pixels and ``slices`` (default: the scan length at the site's slice
    spacing, about 150-420).  ``nodules`` forces the count (default: realistic 0-5);
    ``detail`` scales the vessel-tree density (1.0 full, smaller for quick previews).
    """
    site = resolve_site(site)
    if shape is not None:
        slices, rows, cols = shape
    else:
        rows = cols = matrix
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    if nodules is not None and not 0 <= nodules <= 5:
        raise InvalidInput(f"nodules must be 0..5, got {nodules}")
    if not 0.05 <= detail <= 2.0:
        raise InvalidInput(f"detail must be 0.05..2.0, got {detail}")
    for name, v, lo in (("rows", rows, 16), ("cols", cols, 16), ("slices", slices or 1, 1)):
        if not lo <= v <= 2048:
            raise InvalidInput(f"{name} must be {lo}..2048, got {v}")
    ph_seed, noise_rng, head_rng = study_seeds(seed)
    phantom = make_phantom(ph_seed, contrast=site.contrast, nodules=nodules, detail=detail)
    grid = ct_grid(site, phantom, rows=rows, cols=cols, slices=slices)
    vol, lab, mask = render(phantom, grid, labels=tissue)
    size = (phantom.body.a * phantom.body.b) / (158.0 * 108.0)
    pixels = apply_scanner(vol, grid, site, noise_rng, noise_scale=float(np.sqrt(size)))
    del vol
    study = make_study(head_rng, site.name, patient_index, site.name_script)
    patient = make_patient(head_rng, site.name, site.name_script, patient_index,
                           parse_date(study.date))
    key = (UID_NAMESPACE, site.name, str(seed))
    study_uid = derived_uid(*key, "study")
    series_uid = derived_uid(*key, "series", "ct")
    frame_uid = derived_uid(*key, "frame")
    truth = []
    for i, n in enumerate(phantom.nodules, start=1):
        c = phantom.to_patient(n.centre)
        if not grid.contains(c):  # a small field of view can cut a nodule off: no truth row
            mask[mask == i] = 0
            continue
        truth.append(NoduleTruth(series_uid, float(c[0]), float(c[1]), float(c[2]),
                                 float(n.diameter), n.kind, n.shape, n.location, site.name, i,
                                 study_uid, patient.patient_id))
    result = CTStudy(site, seed, grid, [], truth, mask, pixels, patient, study, phantom,
                     study_uid, series_uid, frame_uid, lab if tissue else None)
    result.datasets = build_ct_datasets(result, head_rng)
    return result


def common_module(ds: Dataset, site: SiteProfile, patient: PatientInfo, study: StudyInfo,
                  study_uid: str) -> None:
    """Patient, General Study, Patient Study and General Equipment modules (PS3.3 C.7)."""
    ds.SpecificCharacterSet = site.charset.split("\\") if "\\" in site.charset else site.charset
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = site.name.upper()
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.PatientWeight = f"{patient.weight_kg:.1f}"
    ds.PatientSize = f"{patient.height_m:.2f}"
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.ReferringPhysicianName = study.referring
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.StudyDescription = "CT CHEST"
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution
    ds.StationName = site.station_name
    ds.ManufacturerModelName = site.model
    ds.SoftwareVersions = site.software_versions
    ds.DeviceSerialNumber = f"{sum(map(ord, site.name)) * 97:06d}"


def build_ct_datasets(ct: CTStudy, rng: np.random.Generator) -> list[Dataset]:
    """CT Image Storage data sets (PS3.3 A.3: Patient, General Study, General Series,
    Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel,
    Contrast/Bolus when enhanced, CT Image, VOI LUT, SOP Common)."""
    site, grid = ct.site, ct.grid
    nz, ny, nx = grid.shape
    dx, dy, dz = grid.spacing
    base = Dataset()
    common_module(base, site, ct.patient, ct.study, ct.study_uid)
    base.SOPClassUID = CTImageStorage
    base.InstanceCreationDate = ct.study.date
    base.InstanceCreationTime = ct.study.time
    base.Modality = "CT"
    base.SeriesInstanceUID = ct.series_uid
    base.SeriesNumber = 2
    base.SeriesDate = ct.study.date
    base.SeriesTime = ct.study.time
    base.SeriesDescription = f"Thorax {site.slice_thickness_mm:g}mm {site.kernel}"
    base.BodyPartExamined = "CHEST"
    base.PatientPosition = "HFS"
    base.ProtocolName = "Chest routine" + (" + contrast" if site.contrast else "")
    base.FrameOfReferenceUID = ct.frame_uid
    base.PositionReferenceIndicator = ""
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.AcquisitionNumber = 1
    base.AcquisitionDate = ct.study.date
    base.ContentDate = ct.study.date
    base.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.SliceThickness = f"{site.slice_thickness_mm:g}"
    base.SpacingBetweenSlices = f"{dz:.6g}"
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.BitsAllocated = 16
    base.BitsStored = site.bits_stored
    base.HighBit = site.bits_stored - 1
    base.PixelRepresentation = site.pixel_representation
    base.RescaleIntercept = f"{site.rescale_intercept:g}"
    base.RescaleSlope = "1"
    base.RescaleType = "HU"
    base.KVP = f"{site.kvp:g}"
    base.DataCollectionDiameter = "500"
    base.ReconstructionDiameter = f"{site.fov_mm:g}"
    base.DistanceSourceToDetector = "1040"
    base.DistanceSourceToPatient = "570"
    base.GantryDetectorTilt = "0"
    base.TableHeight = f"{150 + rng.uniform(-20, 20):.1f}"
    base.RotationDirection = "CW"
    base.ExposureTime = "500"
    base.XRayTubeCurrent = site.tube_current_ma
    base.Exposure = int(site.tube_current_ma / 2)
    base.ConvolutionKernel = site.kernel
    base.SpiralPitchFactor = 0.984375
    base.ScanOptions = "HELICAL MODE"
    base.WindowCenter = ["-600", "40"]
    base.WindowWidth = ["1500", "400"]
    base.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    if site.padding_hu is not None:
        base.PixelPaddingValue = int(round(site.padding_hu - site.rescale_intercept))
    if site.contrast:
        base.ContrastBolusAgent = "IOPAMIDOL 370"
        base.ContrastBolusRoute = "IV"
        base.ContrastBolusVolume = "80"
    pixel_tag_vr = "OW"
    out = []
    for k in range(nz):
        ds = Dataset()
        ds.update(base)
        instance = nz - k
        uid = derived_uid(UID_NAMESPACE, site.name, str(ct.seed), "ct", str(k))
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = instance
        z = grid.origin[2] + k * dz
        ds.ImagePositionPatient = [f"{grid.origin[0]:.4f}", f"{grid.origin[1]:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.AcquisitionTime = ds.ContentTime = _time_plus(ct.study.time, 60 + 0.01 * (nz - k))
        plane = ct.pixels[k]
        arr = plane.astype("<i2" if site.pixel_representation else "<u2", copy=False)
        ds.add_new(0x7FE00010, pixel_tag_vr, arr.tobytes())
        ds.file_meta = file_meta(CTImageStorage, uid)
        out.append(ds)
    out.reverse()  # instance 1 first
    return out


def _time_plus(hhmmss: str, seconds: float) -> str:
    t = dt.datetime.strptime(hhmmss, "%H%M%S") + dt.timedelta(seconds=seconds)
    return t.strftime("%H%M%S.%f")[:13]


def read_ct(datasets: list[Dataset]) -> np.ndarray:
    """Reference reader for tests: HU volume ``[z, y, x]`` sorted by ImagePositionPatient."""
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope)
                     + float(d.RescaleIntercept) for d in ordered])


