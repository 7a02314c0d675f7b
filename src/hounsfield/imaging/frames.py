"""Frames of an image series: geometry and pixels of each 2D frame, single- or multi-frame.

Classic single-frame images carry their geometry in the Image Plane module (PS3.3 C.7.6.2);
enhanced multi-frame images in functional groups (PS3.3 C.7.6.16: Plane Position, Plane
Orientation, Pixel Measures, Pixel Value Transformation, Frame Content), per frame or shared.
Every problem is reported with the instance (and frame) it concerns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian

from hounsfield.errors import InvalidDicom

SUPPORTED_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2"}


@dataclass
class Frame:
    sop_instance_uid: str
    frame_number: int  # 1-based in a multi-frame object, 0 for a single-frame image
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    row_dir: np.ndarray  # ImageOrientationPatient[0:3]: direction along a row (i)
    col_dir: np.ndarray  # ImageOrientationPatient[3:6]: direction down a column (j)
    spacing_ij: tuple[float, float]  # (column spacing, row spacing) = (PixelSpacing[1], [0])
    rows: int
    columns: int
    slope: float
    intercept: float
    stack_key: tuple
    split_keys: dict[str, object]
    thickness: float | None
    pixels: Callable[[], np.ndarray] = field(repr=False)
    value_range: tuple[int, int] | None = None  # stored pixel range from BitsStored / sign

    @property
    def label(self) -> str:
        return f"{self.sop_instance_uid}" + (f" frame {self.frame_number}" if self.frame_number else "")

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)


def _floats(value: object, n: int, what: str, label: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise InvalidDicom(f"{label}: {what} is not numeric ({value!r})") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InvalidDicom(f"{label}: {what} must have {n} finite values, got {value!r}")
    return arr


def _orientation(value: object, label: str) -> tuple[np.ndarray, np.ndarray]:
    iop = _floats(value, 6, "ImageOrientationPatient", label)
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6 or abs(float(r @ c) / (nr * nc)) > 1e-3:
        raise InvalidDicom(f"{label}: ImageOrientationPatient is not two orthogonal unit vectors")
    return r / nr, c / nc


def _check_pixel_module(ds: Dataset, label: str) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InvalidDicom(f"{label}: no pixel data")
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    if pi not in SUPPORTED_PHOTOMETRIC:
        raise InvalidDicom(f"{label}: unsupported photometric interpretation {pi or '(none)'!r} "
                           "for a volume (MONOCHROME1/2 only)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InvalidDicom(f"{label}: more than one sample per pixel")


def _fast_pixels(ds: Dataset) -> np.ndarray | None:
    """Native little-endian integer pixels without the plugin machinery (the common CT case)."""
    if not ds.file_meta or ds.file_meta.get("TransferSyntaxUID") is None:
        return None
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed or ts == ExplicitVRBigEndian or "PixelData" not in ds:
        return None
    bits = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", bits))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits not in (8, 16, 32):
        return None
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}").newbyteorder("<")
    nf = int(str(ds.get("NumberOfFrames", 1) or 1))
    n = int(ds.Rows) * int(ds.Columns) * nf
    raw = ds.PixelData
    if len(raw) < n * dtype.itemsize:
        return None
    shape = (nf, int(ds.Rows), int(ds.Columns)) if nf > 1 else (int(ds.Rows), int(ds.Columns))
    a = np.frombuffer(raw, dtype=dtype, count=n).reshape(shape)
    if stored < bits and signed:  # sign-extend (unsigned values are taken as stored, like GDCM)
        shift = bits - stored
        a = (a << shift) >> shift
    return a


def _value_range(ds: Dataset) -> tuple[int, int] | None:
    try:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
    except (TypeError, ValueError):
        return None
    if not 1 <= bits <= 32:
        return None
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _decoder(ds: Dataset, label: str) -> Callable[[], np.ndarray]:
    cache: dict[str, np.ndarray] = {}

    def decode() -> np.ndarray:
        if "a" not in cache:
            try:
                arr = _fast_pixels(ds)
                if arr is None:
                    arr = ds.pixel_array
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad instance
                raise InvalidDicom(f"{label}: cannot decode pixel data: {exc}") from exc
            cache["a"] = arr
        return cache["a"]

    return decode


def _attr(items: list[Dataset], seq: str, kw: str) -> object:
    """``kw`` from the first of ``items`` (per-frame group, then shared) that has ``seq``."""
    for it in items:
        if it is not None and seq in it and len(it[seq].value) and kw in it[seq].value[0]:
            return it[seq].value[0][kw].value
    return None


def frames_of(ds: Dataset) -> list[Frame]:
    """All frames of one image instance, with geometry and (lazily decoded) pixels."""
    sop = str(ds.get("SOPInstanceUID", "?"))
    _check_pixel_module(ds, sop)
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        nframes = int(str(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError) as exc:
        raise InvalidDicom(f"{sop}: bad Rows/Columns/NumberOfFrames: {exc}") from exc
    if rows <= 0 or cols <= 0 or nframes <= 0:
        raise InvalidDicom(f"{sop}: Rows/Columns/NumberOfFrames missing or zero")
    decode = _decoder(ds, sop)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    localizer = "LOCALIZER" in image_type
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, sop, rows, cols, nframes, localizer, decode)
    if nframes > 1 and "GridFrameOffsetVector" in ds:
        return _grid_frames(ds, sop, rows, cols, nframes, decode)
    if nframes > 1:
        raise InvalidDicom(f"{sop}: multi-frame image without per-frame geometry "
                           "(no functional groups): cannot be placed in a volume")
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise InvalidDicom(f"{sop}: no ImagePositionPatient/ImageOrientationPatient (not a "
                           "cross-sectional image)")
    if "PixelSpacing" not in ds:
        raise InvalidDicom(f"{sop}: missing PixelSpacing")
    pos = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", sop)
    r, c = _orientation(ds.ImageOrientationPatient, sop)
    ps = _floats(ds.PixelSpacing, 2, "PixelSpacing", sop)
    if np.any(ps <= 0):
        raise InvalidDicom(f"{sop}: PixelSpacing must be positive, got {list(ps)}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    key = (tuple(np.round(np.concatenate([r, c]), 3)), localizer,
           str(ds.get("EchoNumbers", "")), "")
    split = {k: ds.get(k) for k in ("TemporalPositionIdentifier", "TriggerTime",
                                    "AcquisitionNumber", "DiffusionBValue")}
    thick = ds.get("SliceThickness")

    return [Frame(sop, 0, pos, r, c, (float(ps[1]), float(ps[0])), rows, cols, slope, intercept,
                  key, split, float(thick) if thick not in (None, "") else None, decode,
                  _value_range(ds))]


def _enhanced_frames(ds: Dataset, sop: str, rows: int, cols: int, nframes: int, localizer: bool,
                     decode: Callable[[], np.ndarray]) -> list[Frame]:
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per and len(per) != nframes:
        raise InvalidDicom(f"{sop}: {len(per)} per-frame functional group items for "
                           f"{nframes} frames")
    out: list[Frame] = []
    for f in range(nframes):
        label = f"{sop} frame {f + 1}"
        groups = [per[f] if per else None, shared]
        pos = _attr(groups, "PlanePositionSequence", "ImagePositionPatient")
        iop = _attr(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _attr(groups, "PixelMeasuresSequence", "PixelSpacing")
        if pos is None or iop is None:
            raise InvalidDicom(f"{label}: no Plane Position / Plane Orientation functional group")
        if ps is None:
            raise InvalidDicom(f"{label}: missing PixelSpacing (Pixel Measures functional group)")
        p = _floats(pos, 3, "ImagePositionPatient", label)
        r, c = _orientation(iop, label)
        psa = _floats(ps, 2, "PixelSpacing", label)
        if np.any(psa <= 0):
            raise InvalidDicom(f"{label}: PixelSpacing must be positive")
        slope = _attr(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _attr(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None:
            slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
        stack_id = _attr(groups, "FrameContentSequence", "StackID")
        temporal = _attr(groups, "FrameContentSequence", "TemporalPositionIndex")
        echo = _attr(groups, "MREchoSequence", "EffectiveEchoTime")
        thick = _attr(groups, "PixelMeasuresSequence", "SliceThickness")
        key = (tuple(np.round(np.concatenate([r, c]), 3)), localizer, str(echo or ""),
               f"{stack_id or ''}/{temporal or ''}")
        split = {"TriggerTime": _attr(groups, "CardiacSynchronizationSequence",
                                      "NominalCardiacTriggerDelayTime"),
                 "DiffusionBValue": _attr(groups, "MRDiffusionSequence", "DiffusionBValue")}

        def pixels(i: int = f) -> np.ndarray:
            a = decode()
            return a[i] if a.ndim == 3 else a

        out.append(Frame(sop, f + 1, p, r, c, (float(psa[1]), float(psa[0])), rows, cols,
                         float(slope if slope not in (None, "") else 1),
                         float(intercept if intercept not in (None, "") else 0),
                         key, split, float(thick) if thick not in (None, "") else None, pixels))
    return out


def _grid_frames(ds: Dataset, sop: str, rows: int, cols: int, nframes: int,
                 decode: Callable[[], np.ndarray]) -> list[Frame]:
    """RT Dose style multi-frame: planes at GridFrameOffsetVector along the normal (C.8.8.3.2)."""
    pos = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", sop)
    r, c = _orientation(ds.get("ImageOrientationPatient"), sop)
    if "PixelSpacing" not in ds:
        raise InvalidDicom(f"{sop}: missing PixelSpacing")
    ps = _floats(ds.PixelSpacing, 2, "PixelSpacing", sop)
    offsets = _floats(ds.GridFrameOffsetVector, nframes, "GridFrameOffsetVector", sop)
    n = np.cross(r, c)
    if offsets[0] != 0:  # absolute form: offsets are coordinates along the normal
        offsets = offsets - float(pos @ n)
    slope = float(ds.get("DoseGridScaling", ds.get("RescaleSlope", 1)) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    key = (tuple(np.round(np.concatenate([r, c]), 3)), False, "", "")
    out = []
    for f in range(nframes):
        def pixels(i: int = f) -> np.ndarray:
            a = decode()
            return a[i] if a.ndim == 3 else a

        out.append(Frame(sop, f + 1, pos + offsets[f] * n, r, c, (float(ps[1]), float(ps[0])),
                         rows, cols, slope, intercept, key, {}, None, pixels))
    return out
