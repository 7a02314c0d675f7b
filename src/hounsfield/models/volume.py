"""CT series -> volume in patient space, and the preprocessing plan shared by training and inference.

``load_series`` reads a CT series from the archive (PS3.3 C.7.6.2 Image Plane: ImagePositionPatient,
ImageOrientationPatient, PixelSpacing; C.11.1 Modality LUT: RescaleSlope/Intercept) into a
:class:`Volume` (HU, ``z, y, x`` array) with its voxel -> patient-mm affine.

It is the AI platform's narrow reader until ``hounsfield.imaging`` (series -> Volume,
harmonisation plans) lands on main; then this module delegates to it.

The :class:`PreprocessPlan` (target spacing, HU window) is saved with every model bundle so
inference prepares volumes exactly as training did.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from hounsfield.errors import InvalidDicom, NotFound


@dataclass
class Volume:
    """HU voxels (``z, y, x``), spacing (x, y, z) mm, origin (patient mm of voxel 0) and the
    3x3 direction matrix whose columns are the patient directions of the x, y, z voxel axes."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_instance_uid: str = ""

    def to_patient(self, zyx: np.ndarray) -> np.ndarray:
        """Voxel indices (n, 3 as z, y, x; may be fractional) -> patient mm (n, 3 as x, y, z)."""
        ijk = np.asarray(zyx, dtype=np.float64)[:, ::-1] * np.asarray(self.spacing)
        return np.asarray(self.origin) + ijk @ self.direction.T

    def to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Patient mm (n, 3 as x, y, z) -> fractional voxel indices (n, 3 as z, y, x)."""
        rel = (np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)) @ self.direction
        return (rel / np.asarray(self.spacing))[:, ::-1]


class PreprocessPlan(BaseModel):
    """How a CT becomes network input (saved with the model; identical in training/inference)."""

    model_config = ConfigDict(extra="forbid")

    spacing_mm: tuple[float, float, float] = Field(default=(1.4, 1.4, 2.5),
                                                   description="target voxel size x, y, z")
    hu_min: float = -1000.0
    hu_max: float = 400.0

    def key(self) -> str:
        return "sp{:g}x{:g}x{:g}_hu{:g}_{:g}".format(*self.spacing_mm, self.hu_min, self.hu_max)

    def apply(self, vol: Volume) -> Volume:
        """Resample to ``spacing_mm`` (trilinear) and map the HU window to [0, 1] (float32)."""
        src = np.asarray(vol.spacing, dtype=np.float64)
        dst = np.asarray(self.spacing_mm, dtype=np.float64)
        shape_xyz = np.array(vol.array.shape[::-1])
        new_xyz = np.maximum(1, np.round(shape_xyz * src / dst)).astype(int)
        t = torch.from_numpy(np.ascontiguousarray(vol.array, dtype=np.float32))[None, None]
        if tuple(new_xyz[::-1]) != vol.array.shape:
            t = F.interpolate(t, size=tuple(int(v) for v in new_xyz[::-1]), mode="trilinear",
                              align_corners=True)
        # align_corners: first and last voxel centres stay put, so the spacing is exact per axis
        eff = np.where(new_xyz > 1, src * (shape_xyz - 1) / np.maximum(new_xyz - 1, 1), dst)
        a = ((t[0, 0].numpy() - self.hu_min) / (self.hu_max - self.hu_min)).clip(0, 1)
        return Volume(a.astype(np.float32), tuple(float(v) for v in eff), vol.origin,
                      vol.direction, vol.series_instance_uid)


def load_series(archive, series_instance_uid: str) -> Volume:
    """Read a single-frame CT series from the archive into a :class:`Volume` (HU).

    Raises NotFound for an unknown series and InvalidDicom when the slices do not form one
    regular volume (missing geometry, mixed orientations or sizes).
    """
    import pydicom

    from hounsfield.archive.query import instances_of

    with archive.session() as s:
        insts = [(i.blob_key, i.sop_instance_uid) for i in instances_of(s, series_instance_uid)]
    if not insts:
        raise NotFound(f"series {series_instance_uid} is not in the archive")
    slices = []
    for key, uid in insts:
        ds = pydicom.dcmread(io.BytesIO(archive.blobs.read(key)))
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InvalidDicom(f"instance {uid}: no ImagePositionPatient/ImageOrientationPatient")
        slices.append(ds)
    return volume_from_datasets(slices, series_instance_uid)


def volume_from_datasets(slices: list, series_instance_uid: str = "") -> Volume:
    """Sort slices along the normal and stack them (HU via the modality LUT)."""
    iop = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in slices:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise InvalidDicom("series mixes slice orientations; cannot form one volume")
        if (ds.Rows, ds.Columns) != (slices[0].Rows, slices[0].Columns):
            raise InvalidDicom("series mixes image sizes; cannot form one volume")
    pos = [np.array(ds.ImagePositionPatient, dtype=np.float64) for ds in slices]
    order = np.argsort([p @ normal for p in pos])
    slices = [slices[i] for i in order]
    pos = [pos[i] for i in order]
    dz = float(np.median(np.diff([p @ normal for p in pos]))) if len(pos) > 1 else float(
        getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    if dz <= 0:
        raise InvalidDicom("slices share one position; cannot form a volume")
    arr = np.stack([
        ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1)
        + float(getattr(ds, "RescaleIntercept", 0) or 0) for ds in slices
    ])
    ps = [float(v) for v in slices[0].PixelSpacing]  # row spacing (y), column spacing (x)
    direction = np.stack([row, col, normal], axis=1)
    return Volume(arr, (ps[1], ps[0], dz), tuple(float(v) for v in pos[0]), direction,
                  series_instance_uid)
