"""What the two implementations of the stage-1 blob filter share: the candidate settings, the
candidates record, the scale parameters of a blob diameter and the Hessian by central
differences.  :mod:`hounsfield.models.candidates` (scipy) and
:mod:`hounsfield.models.candidates_torch` (torch, for GPUs) both build on this module, so neither
imports the other's internals (the scipy module chooses the torch one only when asked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class CandidateSpec(BaseModel):
    """Candidate-generation settings (saved with the model bundle)."""

    model_config = ConfigDict(extra="forbid")

    diameters_mm: tuple[float, ...] = (3.0, 4.5, 6.5, 9.5, 14.0, 20.0, 28.0)
    lung_hu: float = Field(default=-500.0, description="lung = below this HU")
    clip_hu: float | None = Field(
        default=None, description="blob filter on the image clipped to this HU: solid vessels "
        "and ground-glass / part-solid nodules then answer more alike (faint nodules rank higher)")
    dilate_mm: float = Field(default=6.0, ge=0)
    min_response: float = Field(default=0.005, ge=0, description="min scale-normalised blobness")
    max_candidates: int = Field(default=1400, ge=1, description="split evenly over the "
                                "scales unless per_scale is given")
    per_scale: tuple[int, ...] | None = Field(
        default=None, description="candidates kept per scale (aligned with diameters_mm): small "
        "scales need many more — vessel crossings and ends look like small blobs too")
    faint_clip_hu: float | None = Field(
        default=None, description="a second pass of the blob filter on the image clipped at "
        "this (lower) HU, for faint ground-glass nodules: vessels then answer no stronger than "
        "ground glass does")
    faint_per_scale: tuple[int, ...] | None = Field(
        default=None, description="candidates the faint pass adds per scale (aligned with "
        "diameters_mm; 0 = that scale skips the second pass)")
    merge_mm: float = Field(default=3.0, ge=0, description="peaks of one scale closer than this "
                            "(or the scale's radius) are one candidate")

    @model_validator(mode="after")
    def _aligned(self) -> "CandidateSpec":
        if self.per_scale is not None and len(self.per_scale) != len(self.diameters_mm):
            raise ValueError("per_scale needs one count per entry of diameters_mm")
        if self.faint_per_scale is not None and len(self.faint_per_scale) != len(self.diameters_mm):
            raise ValueError("faint_per_scale needs one count per entry of diameters_mm")
        if (self.faint_clip_hu is None) != (self.faint_per_scale is None):
            raise ValueError("faint_clip_hu and faint_per_scale go together")
        return self


@dataclass(frozen=True)
class Candidates:
    """Candidates of one volume (voxel z, y, x; diameter mm; blobness response)."""

    zyx: np.ndarray          # (n, 3) float
    diameter_mm: np.ndarray  # (n,)
    response: np.ndarray     # (n,)

    def __len__(self) -> int:
        return len(self.response)


def scale_parameters(d: float, sp_zyx: np.ndarray, spec: CandidateSpec
                     ) -> tuple[float, np.ndarray, list[int]]:
    """For a blob of diameter ``d`` mm: the Gaussian's sigma in mm and in voxels (at least 0.5)
    and the peak-search window in voxels (odd, >= 3, the scale's radius or ``merge_mm``)."""
    sig_mm = d / (2 * np.sqrt(3.0))
    rad = max(spec.merge_mm, d / 2)
    return (sig_mm, np.maximum(sig_mm / sp_zyx, 0.5),
            [max(3, 2 * int(round(rad / s)) + 1) for s in sp_zyx])


def hessian(g, sp_zyx):  # noqa: ANN001, ANN201 - numpy arrays or torch tensors alike
    """Central-difference Hessian (per mm) of a smoothed volume ``g`` at its inner voxels:
    ``(dzz, dyy, dxx, dzy, dzx, dyx)`` and the mask of where it is negative definite
    (Sylvester's criterion).  Slicing and arithmetic only, so numpy and torch share it."""
    hz, hy, hx = (float(v) for v in sp_zyx)
    Z, Y, X = g.shape

    def sh(dz: int, dy: int, dx: int):  # noqa: ANN202
        return g[1 + dz:Z - 1 + dz, 1 + dy:Y - 1 + dy, 1 + dx:X - 1 + dx]

    mid = sh(0, 0, 0)
    dzz = (sh(1, 0, 0) - 2 * mid + sh(-1, 0, 0)) / (hz * hz)
    dyy = (sh(0, 1, 0) - 2 * mid + sh(0, -1, 0)) / (hy * hy)
    dxx = (sh(0, 0, 1) - 2 * mid + sh(0, 0, -1)) / (hx * hx)
    dzy = (sh(1, 1, 0) - sh(1, -1, 0) - sh(-1, 1, 0) + sh(-1, -1, 0)) / (4 * hz * hy)
    dzx = (sh(1, 0, 1) - sh(1, 0, -1) - sh(-1, 0, 1) + sh(-1, 0, -1)) / (4 * hz * hx)
    dyx = (sh(0, 1, 1) - sh(0, 1, -1) - sh(0, -1, 1) + sh(0, -1, -1)) / (4 * hy * hx)
    det2 = dzz * dyy - dzy * dzy
    det3 = dzz * (dyy * dxx - dyx * dyx) - dzy * (dzy * dxx - dyx * dzx) + dzx * (dzy * dyx - dyy * dzx)
    return (dzz, dyy, dxx, dzy, dzx, dyx), (dzz < 0) & (det2 > 0) & (det3 < 0)
