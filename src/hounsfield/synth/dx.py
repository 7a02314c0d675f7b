"""Synthetic PA chest radiographs (DX) projected from the same phantoms as the CT.

Physics: the phantom's true HU becomes linear attenuation (``mu = mu_water * (1 + HU/1000)``),
integrated along posterior-to-anterior rays (Beer-Lambert, parallel-beam approximation of a
180 cm source-image distance).  The detector model adds scatter (a blurred fraction of the
primary), quantum noise (Poisson counts), the scintillator's blur and a log transform; the
stored image has bone and soft tissue bright (MONOCHROME2, PixelIntensityRelationship LOG).

Written as DX Image Storage - For Presentation (PS3.3 A.26).  Truth per image: whether any
nodule is present, and per nodule its centre (row, column) and diameter in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from scipy import ndimage

from hounsfield.dicom.uids import derived_uid
from hounsfield.errors import InvalidInput
from hounsfield.synth.ct import UID_NAMESPACE, common_module, file_meta, study_seeds
from hounsfield.synth.grid import Grid
from hounsfield.synth.names import PatientInfo, StudyInfo, make_patient, make_study, parse_date
from hounsfield.synth.phantom import Phantom, make_phantom, render
from hounsfield.synth.sites import SiteProfile, resolve_site

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
MU_WATER = 0.0195          # 1/mm at the effective energy of a 120 kVp chest exposure
DETECTOR_MM = 430.0


@dataclass
class DXTruth:
    """Truth of one radiograph: one row per nodule, or one row with no nodule."""

    sopinstanceuid: str
    studyuid: str
    patient_id: str
    site: str
    nodule_present: int
    label: int = 0
    row: float = -1.0
    col: float = -1.0
    diameter_mm: float = 0.0
    diameter_px: float = 0.0
    nodule_type: str = ""
    shape: str = ""
    location: str = ""

    CSV_FIELDS = ("sopinstanceuid", "studyuid", "patient_id", "site", "nodule_present", "label",
                  "row", "col", "diameter_mm", "diameter_px", "nodule_type", "shape", "location")

    def row_dict(self) -> dict[str, object]:
        return {f: (round(v, 2) if isinstance(v, float) else v)
                for f, v in ((f, getattr(self, f)) for f in self.CSV_FIELDS)}


@dataclass
class DXStudy:
    site: SiteProfile
    seed: int
    dataset: Dataset
    image: np.ndarray            # stored values [row, col] (uint16)
    truth: list[dict[str, object]]
    pixel_mm: float
    patient: PatientInfo
    study: StudyInfo
    phantom: Phantom
    study_uid: str


def project(ph: Phantom, *, matrix: int, rng: np.random.Generator, render_step: float,
            photons: float = 6000.0, scatter: float = 0.25) -> tuple[np.ndarray, float, np.ndarray]:
    """(stored 12-bit image [row, col], detector pixel mm, centre (x, z) of the detector)."""
    b = ph.body
    zc = b.z_base + 0.45 * b.lung_height
    centre = np.array([0.0, zc])
    n_r = max(int(DETECTOR_MM / render_step), 16)
    step_r = DETECTOR_MM / n_r
    dy = 2.0
    y0, y1 = -b.b - 4.0, 0.93 * b.b
    ny = int((y1 - y0) / dy) + 1
    grid = Grid((ph.offset[0] + centre[0] - DETECTOR_MM / 2 + step_r / 2,
                 ph.offset[1] + y0, ph.offset[2] + zc - DETECTOR_MM / 2 + step_r / 2),
                (step_r, dy, step_r), (n_r, ny, n_r))
    vol, _lab, _mask = render(ph, grid, labels=False)
    mu = np.clip(vol, -1000.0, None)
    mu += 1000.0
    mu *= np.float32(MU_WATER / 1000.0 * dy)
    line = mu.sum(axis=1)                         # [z, x], z ascending
    del vol, mu
    line = line[::-1]                             # row 0 = most superior
    pix = DETECTOR_MM / matrix
    if matrix != n_r:
        line = ndimage.zoom(line, matrix / n_r, order=1)[:matrix, :matrix]
    primary = photons * np.exp(-line)
    counts = primary * (1 - scatter) + scatter * ndimage.gaussian_filter(primary, 25.0 / pix)
    counts = rng.poisson(counts).astype(np.float32)
    counts = ndimage.gaussian_filter(counts, 0.35 / pix)
    log = -np.log(np.maximum(counts, 0.5) / photons)
    img = np.clip(np.rint(log / 7.0 * 4095.0), 0, 4095).astype(np.uint16)
    return img, pix, centre


def generate_dx(site: str | SiteProfile, seed: int, *, matrix: int = 1024,
                render_step: float | None = None, nodules: int | None = None,
                detail: float = 1.0, patient_index: int = 0,
                phantom: Phantom | None = None) -> DXStudy:
    """A PA chest radiograph of the patient that ``generate_ct(site, seed)`` scans (same seed
    -> same phantom, nodules and patient), with its truth.  Pass the CT's ``phantom`` to skip
    building it again (it must come from the same seed)."""
    site = resolve_site(site)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    if not 64 <= matrix <= 4096:
        raise InvalidInput(f"matrix must be 64..4096, got {matrix}")
    ph_seed, _noise, head_rng = study_seeds(seed)
    if phantom is None:
        phantom = make_phantom(ph_seed, contrast=site.contrast, nodules=nodules, detail=detail)
    study = make_study(head_rng, site.name, patient_index, site.name_script)
    patient = make_patient(head_rng, site.name, site.name_script, patient_index,
                           parse_date(study.date))
    dx_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4458]))
    step = render_step or max(2.0 * DETECTOR_MM / matrix, 0.85)
    img, pix, centre = project(phantom, matrix=matrix, rng=dx_rng, render_step=step)
    key = (UID_NAMESPACE, site.name, str(seed))
    study_uid = derived_uid(*key, "study", "dx")  # a radiograph is its own study
    study = replace(study, accession=study.accession[:15] + "X", study_id=study.study_id + "X")
    sop_uid = derived_uid(*key, "dx")
    truth: list[dict[str, object]] = []
    zc = phantom.body.z_base + 0.45 * phantom.body.lung_height
    for i, n in enumerate(phantom.nodules, start=1):
        col = (n.centre[0] - (centre[0] - DETECTOR_MM / 2)) / pix - 0.5
        row = ((zc + DETECTOR_MM / 2) - n.centre[2]) / pix - 0.5
        truth.append(DXTruth(sop_uid, study_uid, patient.patient_id, site.name, 1, i,
                             float(row), float(col), float(n.diameter), float(n.diameter / pix),
                             n.kind, n.shape, n.location).row_dict())
    if not truth:
        truth.append(DXTruth(sop_uid, study_uid, patient.patient_id, site.name, 0).row_dict())
    ds = _dx_dataset(site, patient, study, study_uid, sop_uid, img, pix, seed)
    return DXStudy(site, seed, ds, img, truth, pix, patient, study, phantom, study_uid)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _dx_dataset(site: SiteProfile, patient: PatientInfo, study: StudyInfo, study_uid: str,
                sop_uid: str, img: np.ndarray, pix: float, seed: int) -> Dataset:
    """DX Image IOD, For Presentation (PS3.3 A.26.1: DX Series, DX Anatomy Imaged, DX Image,
    DX Detector, DX Positioning, VOI LUT, SOP Common ...)."""
    ds = Dataset()
    common_module(ds, site, patient, study, study_uid)
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = study.date
    ds.InstanceCreationTime = study.time
    ds.Modality = "DX"
    ds.SeriesInstanceUID = derived_uid(UID_NAMESPACE, site.name, str(seed), "series", "dx")
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Chest PA"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ContentDate = study.date
    ds.ContentTime = study.time
    ds.AcquisitionDate = study.date
    ds.AcquisitionTime = study.time
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
    ds.ViewPosition = "PA"
    ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
    ds.PatientOrientationCodeSequence = Sequence([_code("C86043", "NCIt", "erect")])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    mag = 1800.0 / 1750.0
    ds.ImagerPixelSpacing = [f"{pix * mag:.6g}", f"{pix * mag:.6g}"]
    ds.PixelSpacing = [f"{pix:.6g}", f"{pix:.6g}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "synthetic projection, patient plane"
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = "1750"
    ds.EstimatedRadiographicMagnificationFactor = f"{mag:.6g}"
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = Sequence()
    ds.KVP = "120"
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = 250
    ds.Grid = "FOCUSED"
    ds.add_new(0x7FE00010, "OW", img.astype("<u2").tobytes())
    ds.file_meta = file_meta(DX_SOP_CLASS, sop_uid)
    return ds
