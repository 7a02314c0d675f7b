"""Series -> :class:`~hounsfield.imaging.volume.Volume` (PS3.3 C.7.6.2 Image Plane geometry).

Frames are grouped into *stacks* (orientation, localizer or not, echo, enhanced StackID /
TemporalPositionIndex; frames at the same position are split further by temporal position,
trigger time, acquisition number or b-value), then sorted along the slice normal (never by
InstanceNumber).  Within a stack the loader refuses — with a reason naming the instances — or,
with ``resample=True``, corrects: gantry tilt (slices sheared along the normal) and missing
slices (irregular spacing).  Differing Rows/Columns or PixelSpacing are always refused.
Rescale slope/intercept (per instance or per frame) is applied, so CT comes out in HU.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from hounsfield.errors import InvalidDicom, InvalidInput, NotFound
from hounsfield.imaging.frames import Frame, frames_of
from hounsfield.imaging.volume import Volume

#: relative tolerance on slice spacing (a missing slice doubles one gap)
SPACING_RTOL = 0.02
#: slices whose in-plane offset exceeds this fraction of the through-plane distance are tilted
TILT_TOL = 1e-3


@dataclass
class Stack:
    """Frames of one geometric stack, sorted along the normal."""

    frames: list[Frame]
    distances: np.ndarray  # position of each frame along the normal (mm)

    @property
    def description(self) -> str:
        f = self.frames[0]
        kind = "localizer" if f.stack_key[1] else "stack"
        return (f"{kind} of {len(self.frames)} frame(s), {f.rows}x{f.columns}, "
                f"normal {np.round(f.normal, 3).tolist()}")


# -- grouping ---------------------------------------------------------------------------------
def stacks_of(datasets: Iterable[Dataset]) -> list[Stack]:
    """Split a series' frames into stacks, largest first."""
    groups: dict[tuple, list[Frame]] = defaultdict(list)
    for ds in datasets:
        for fr in frames_of(ds):
            groups[fr.stack_key].append(fr)
    if not groups:
        raise InvalidInput("series has no image frames")
    out: list[Stack] = []
    for frames in groups.values():
        for part in _split_duplicates(frames):
            out.append(_sorted_stack(part))
    out.sort(key=lambda s: (-len(s.frames), s.frames[0].stack_key[1]))
    return out


def _distances(frames: list[Frame]) -> np.ndarray:
    n = frames[0].normal
    return np.array([float(f.position @ n) for f in frames])


def _has_duplicates(frames: list[Frame]) -> bool:
    d = np.round(_distances(frames), 3)
    return len(np.unique(d)) != len(d)


def _split_duplicates(frames: list[Frame]) -> list[list[Frame]]:
    if len(frames) < 2 or not _has_duplicates(frames):
        return [frames]
    for key in ("TemporalPositionIdentifier", "TriggerTime", "AcquisitionNumber",
                "DiffusionBValue"):
        parts: dict[str, list[Frame]] = defaultdict(list)
        for f in frames:
            parts[str(f.split_keys.get(key))].append(f)
        if len(parts) > 1 and not any(_has_duplicates(p) for p in parts.values()):
            return list(parts.values())
    d = np.round(_distances(frames), 3)
    vals, counts = np.unique(d, return_counts=True)
    at = vals[counts > 1][0]
    clash = [f.label for f, x in zip(frames, d, strict=True) if x == at][:3]
    raise InvalidInput(f"several frames at the same position ({at} mm along the normal) that "
                       f"no temporal/echo/acquisition attribute separates: {', '.join(clash)}")


def _sorted_stack(frames: list[Frame]) -> Stack:
    d = _distances(frames)
    order = np.argsort(d, kind="stable")
    return Stack([frames[i] for i in order], d[order])


# -- checks and assembly ----------------------------------------------------------------------
def _check_uniform(stack: Stack) -> None:
    f0 = stack.frames[0]
    for f in stack.frames[1:]:
        if (f.rows, f.columns) != (f0.rows, f0.columns):
            raise InvalidInput(f"differing Rows/Columns in one stack: {f0.label} is "
                               f"{f0.rows}x{f0.columns}, {f.label} is {f.rows}x{f.columns}")
        if not np.allclose(f.spacing_ij, f0.spacing_ij, rtol=1e-4, atol=1e-5):
            raise InvalidInput(f"differing PixelSpacing in one stack: {f0.label} "
                               f"{f0.spacing_ij}, {f.label} {f.spacing_ij}")


def _tilt(stack: Stack) -> float:
    """Largest in-plane offset of a slice relative to its through-plane distance (tan angle)."""
    f0 = stack.frames[0]
    n = f0.normal
    worst = 0.0
    for f, d in zip(stack.frames[1:], stack.distances[1:], strict=True):
        v = f.position - f0.position
        through = abs(d - stack.distances[0])
        if through < 1e-9:
            continue
        worst = max(worst, float(np.linalg.norm(v - (v @ n) * n)) / through)
    return worst


@dataclass
class StackGeometry:
    """What the loader checks in a stack, from the headers alone (no pixels decoded)."""

    slice_spacing: float  # median distance between neighbouring slices (mm); 1.0 for one slice
    tilt: float  # tan of the largest drift of a slice off the normal (gantry tilt / shear)
    irregular_gap: int | None  # k: the worst gap, between frames k and k+1, is off; None: regular

    @property
    def tilted(self) -> bool:
        return self.tilt > TILT_TOL

    @property
    def tilt_deg(self) -> float:
        return float(np.degrees(np.arctan(self.tilt)))


def stack_geometry(stack: Stack) -> StackGeometry:
    """The geometry of ``stack``; :class:`InvalidInput` when its frames differ in Rows/Columns
    or PixelSpacing.  Tilt and irregular spacing are reported, not refused (the caller decides)."""
    _check_uniform(stack)
    nsl = len(stack.frames)
    tilt = _tilt(stack) if nsl > 1 else 0.0
    gaps = np.diff(stack.distances)
    sk = float(np.median(gaps)) if nsl > 1 else 1.0  # one slice: unit spacing, as ITK does
    irregular = nsl > 2 and np.max(np.abs(gaps - sk)) > max(SPACING_RTOL * sk, 1e-3)
    return StackGeometry(sk, tilt, int(np.argmax(np.abs(gaps - sk))) if irregular else None)


def volume_from_stack(stack: Stack, *, resample: bool = False, dtype: str | None = None) -> Volume:
    """Assemble one stack into a volume (see the module docstring for what is checked)."""
    geo = stack_geometry(stack)
    f0 = stack.frames[0]
    n = f0.normal
    direction = np.column_stack([f0.row_dir, f0.col_dir, n])
    si, sj = f0.spacing_ij
    tilt, sk = geo.tilt, geo.slice_spacing
    if geo.tilted and not resample:
        raise InvalidInput(f"gantry tilt / sheared stack: slices drift {geo.tilt_deg:.2f}"
                           f" degrees off the slice normal ({f0.label} .. {stack.frames[-1].label}); "
                           "pass resample=True to resample onto an orthogonal grid")
    gaps = np.diff(stack.distances)
    irregular = geo.irregular_gap is not None
    if irregular and not resample:
        k = geo.irregular_gap
        raise InvalidInput(f"irregular slice spacing (missing slices?): {gaps[k]:.3f} mm between "
                           f"{stack.frames[k].label} and {stack.frames[k + 1].label}, expected "
                           f"{sk:.3f} mm; pass resample=True to resample to regular spacing")
    arr = _rescaled(stack.frames, dtype)
    if tilt > TILT_TOL:
        arr = _untilt(arr, stack, si, sj)
    distances = stack.distances
    uids = [f.sop_instance_uid for f in stack.frames]
    frames_no = [f.frame_number for f in stack.frames]
    if irregular:
        arr, distances, picks = _regularise(arr, distances, sk)
        uids = [uids[i] for i in picks]
        frames_no = [frames_no[i] for i in picks]
    origin = f0.position + (distances[0] - stack.distances[0]) * n
    return Volume(arr, (si, sj, sk), tuple(origin), direction, uids, frames_no,
                  meta={"resampled": bool(irregular or tilt > TILT_TOL),
                        "gantry_tilt_deg": float(np.degrees(np.arctan(tilt))),
                        "slice_thickness": f0.thickness})


def _rescaled(frames: list[Frame], dtype: str | None) -> np.ndarray:
    pix = [f.pixels() for f in frames]
    for f, px in zip(frames, pix, strict=True):
        if px.shape != pix[0].shape:
            raise InvalidDicom(f"{f.label}: pixel data is {px.shape}, expected {pix[0].shape}")
    integral = all(f.slope == round(f.slope) and f.intercept == round(f.intercept) for f in frames)
    if dtype:
        out_dtype = np.dtype(dtype)
    elif integral and all(p.dtype.kind in "iu" for p in pix):
        lo = hi = 0
        for f, p in zip(frames, pix, strict=True):
            # the range BitsStored allows (no pass over the data), else the data's own
            vlo, vhi = f.value_range if f.value_range else (int(p.min()), int(p.max()))
            ends = (vlo * int(f.slope) + int(f.intercept), vhi * int(f.slope) + int(f.intercept))
            lo, hi = min(lo, *ends), max(hi, *ends)
        out_dtype = np.dtype(np.int16 if -32768 <= lo and hi <= 32767 else np.int32)
    else:
        out_dtype = np.dtype(np.float32)
    arr = np.empty((len(frames), *pix[0].shape), dtype=out_dtype)
    for k, (f, px) in enumerate(zip(frames, pix, strict=True)):
        if f.slope == 1 and f.intercept == 0:
            arr[k] = px
        elif out_dtype.kind in "iu":
            if f.slope == 1:
                np.add(px, np.int32(f.intercept), out=arr[k], casting="unsafe")
            else:
                np.multiply(px, np.int32(f.slope), out=arr[k], casting="unsafe")
                arr[k] += out_dtype.type(f.intercept)
        else:
            np.multiply(px, np.float32(f.slope), out=arr[k], casting="unsafe")
            arr[k] += np.float32(f.intercept)
    return arr


def _untilt(arr: np.ndarray, stack: Stack, si: float, sj: float) -> np.ndarray:
    """Shift each slice in-plane so all slices sit on the normal through the first one."""
    from scipy.ndimage import shift as nd_shift

    f0 = stack.frames[0]
    n = f0.normal
    out = np.empty(arr.shape, dtype=np.float32)
    fill = float(arr.min())
    for k, f in enumerate(stack.frames):
        v = f.position - f0.position
        inplane = v - (v @ n) * n
        di, dj = float(inplane @ f0.row_dir) / si, float(inplane @ f0.col_dir) / sj
        out[k] = nd_shift(arr[k].astype(np.float32), (dj, di), order=1, mode="constant", cval=fill)
    return out


def _regularise(arr: np.ndarray, d: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Linear interpolation along the normal onto ``d[0] + m * step``."""
    m = int(round((d[-1] - d[0]) / step))
    target = d[0] + step * np.arange(m + 1)
    idx = np.clip(np.searchsorted(d, target, side="right") - 1, 0, len(d) - 2)
    w = ((target - d[idx]) / (d[idx + 1] - d[idx])).astype(np.float32)[:, None, None]
    a = arr.astype(np.float32)
    out = a[idx] * (1 - w) + a[idx + 1] * w
    picks = [int(i if wi[0, 0] < 0.5 else i + 1) for i, wi in zip(idx, w, strict=True)]
    return out, target, picks


# -- entry points -----------------------------------------------------------------------------
def volume_from_datasets(datasets: Iterable[Dataset], *, stack: int | None = None,
                         resample: bool = False) -> Volume:
    """The volume of a series given as data sets.

    With several stacks, ``stack`` picks one (index into :func:`stacks_of`, largest first);
    without it the largest is taken when it is unambiguous (e.g. axial stack plus localizers),
    otherwise :class:`InvalidInput` lists the stacks.
    """
    dss = list(datasets)
    stacks = stacks_of(dss)
    if stack is not None:
        if not 0 <= stack < len(stacks):
            raise InvalidInput(f"stack {stack} does not exist; the series has {len(stacks)}: "
                               + "; ".join(s.description for s in stacks))
        chosen = stacks[stack]
    elif len(stacks) == 1 or len(stacks[0].frames) > len(stacks[1].frames):
        chosen = stacks[0]
    else:
        raise InvalidInput("series has several stacks of the same size (echoes, phases?): "
                           + "; ".join(f"[{i}] {s.description}" for i, s in enumerate(stacks))
                           + " — choose one with stack=")
    vol = volume_from_stack(chosen, resample=resample)
    first = dss[0]
    vol.modality = str(first.get("Modality", ""))
    vol.series_instance_uid = str(first.get("SeriesInstanceUID", ""))
    vol.meta.update({"stacks": len(stacks), "manufacturer": str(first.get("Manufacturer", "")),
                     "model": str(first.get("ManufacturerModelName", "")),
                     "kernel": str(first.get("ConvolutionKernel", "") or "")})
    return vol


def read_dataset(data: bytes | Path | str, *, name: str = "") -> Dataset:
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        return pydicom.dcmread(src, force=True)
    except Exception as exc:  # noqa: BLE001
        raise InvalidDicom(f"{name or data}: unreadable DICOM: {exc}") from exc


def load_files(paths: Iterable[Path | str], **kw: object) -> Volume:
    """The volume of a series given as files (all from one series)."""
    return volume_from_datasets([read_dataset(p) for p in paths], **kw)  # type: ignore[arg-type]


def load_series(archive, series_uid: str, *, stack: int | None = None,  # noqa: ANN001
                resample: bool = False) -> Volume:
    """The volume of a series stored in the archive (blobs read, never re-fetched)."""
    from hounsfield.archive.models import Instance, Series
    from sqlalchemy import select

    with archive.session() as s:
        rows = s.execute(select(Instance.sop_instance_uid, Instance.blob_key).join(Instance.series)
                         .where(Series.series_instance_uid == series_uid)).all()
    if not rows:
        raise NotFound(f"no series {series_uid} in the archive")
    dss = [read_dataset(archive.blobs.read(key), name=sop) for sop, key in rows]
    return volume_from_datasets(dss, stack=stack, resample=resample)
