"""Volumes for the nodule detector: series -> :class:`hounsfield.imaging.Volume`, voxel <-> patient
mm, and the detector's preprocessing plan (shared by training and inference).

Reading (PS3.3 C.7.6.2 Image Plane, C.11.1 Modality LUT) and resampling are
``hounsfield.imaging``'s; this module adds the detector's view: ``z, y, x`` voxel indices
(``array[k, j, i]``) to patient mm ``x, y, z`` (DICOM LPS, as LUNA16's ``coordX/Y/Z``) and back,
and a :class:`PreprocessPlan` that is an ``imaging.PreprocessingPlan`` with a fixed HU window
mapped to [0, 1] (saved with every model bundle, so inference prepares volumes as training did).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hounsfield.imaging import Volume
from hounsfield.imaging import load_series as _imaging_load_series
from hounsfield.imaging.plan import PreprocessingPlan

__all__ = ["PreprocessPlan", "Volume", "load_series", "preprocessed_volume", "to_patient",
           "to_voxel", "volume_key"]


def to_patient(vol: Volume, zyx: np.ndarray) -> np.ndarray:
    """Voxel indices (n, 3 as z, y, x; may be fractional) -> patient mm (n, 3 as x, y, z)."""
    ijk = np.asarray(zyx, dtype=np.float64).reshape(-1, 3)[:, ::-1]
    a = vol.affine
    return ijk @ a[:3, :3].T + a[:3, 3]


def to_voxel(vol: Volume, xyz: np.ndarray) -> np.ndarray:
    """Patient mm (n, 3 as x, y, z) -> fractional voxel indices (n, 3 as z, y, x)."""
    a = vol.affine
    rel = np.asarray(xyz, dtype=np.float64).reshape(-1, 3) - a[:3, 3]
    return np.linalg.solve(a[:3, :3], rel.T).T[:, ::-1]


def load_series(archive, series_instance_uid: str) -> Volume:
    """The CT series as a volume in HU (``hounsfield.imaging.load_series``)."""
    return _imaging_load_series(archive, series_instance_uid)


class PreprocessPlan(BaseModel):
    """How a CT becomes network input: resample to ``spacing_mm``, HU window -> [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    spacing_mm: tuple[float, float, float] = Field(default=(1.4, 1.4, 2.5),
                                                   description="target voxel size x, y, z")
    hu_min: float = -1000.0
    hu_max: float = 400.0

    def key(self) -> str:
        return "v2-sp{:g}x{:g}x{:g}_hu{:g}_{:g}".format(*self.spacing_mm, self.hu_min, self.hu_max)

    def imaging_plan(self) -> PreprocessingPlan:
        """The equivalent ``hounsfield.imaging`` plan: clip to the window, (HU - min) / width."""
        return PreprocessingPlan(modality="CT", target_spacing=self.spacing_mm,
                                 ct_clip=(self.hu_min, self.hu_max), ct_mean=self.hu_min,
                                 ct_std=self.hu_max - self.hu_min)

    def apply(self, vol: Volume) -> Volume:
        """Resample (linear, SimpleITK) and window; float32 in [0, 1]."""
        out = self.imaging_plan().apply(vol)
        out.series_instance_uid = vol.series_instance_uid
        return out


def volume_key(row: Mapping, plan: PreprocessPlan) -> str:
    """Cache key of a series' preprocessed volume: its content hash (a dataset row's
    ``sha256``) and the plan."""
    return hashlib.sha256(f"{row['sha256']}|{plan.key()}".encode()).hexdigest()[:24]


def preprocessed_volume(archive, row: Mapping, plan: PreprocessPlan,  # noqa: ANN001
                        cache_dir: Path | None) -> Volume:
    """The series of a dataset row (``series_instance_uid``, ``sha256``) through ``plan``,
    cached under ``cache_dir / plan.key() / volume_key(row, plan).npz`` when a folder is given
    (written to a temporary file first, so a reader never sees half a file).  Training,
    validation and evaluation share the cache."""
    uid = row["series_instance_uid"]
    f = None
    if cache_dir is not None:
        f = cache_dir / plan.key() / f"{volume_key(row, plan)}.npz"
        if f.is_file():
            z = np.load(f)
            return Volume(z["array"], tuple(z["spacing"].tolist()), tuple(z["origin"].tolist()),
                          z["direction"], modality="CT", series_instance_uid=uid)
    vol = plan.apply(load_series(archive, uid))
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, array=vol.array, spacing=np.array(vol.spacing), origin=np.array(vol.origin),
                 direction=vol.direction)
        tmp.replace(f)
    return vol
