"""The preprocessing plan shared by training and inference (nnU-Net's "plans", as pydantic).

Derived from a fingerprint (:func:`PreprocessingPlan.from_fingerprint`): the target spacing is
the pooled median spacing; CT intensities are clipped to the pooled body 0.5-99.5 percentiles
and normalised with the pooled body mean/std (the same numbers at every hospital); MR volumes
are z-scored per volume over the body.  :meth:`PreprocessingPlan.apply` turns a
:class:`~hounsfield.imaging.volume.Volume` into the model's input volume (float32) with its
geometry, so predictions map back to patient space.  Saved as readable JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from hounsfield.errors import InvalidInput
from hounsfield.imaging.volume import Volume


class PreprocessingPlan(BaseModel):
    version: Literal[1] = 1
    modality: Literal["CT", "MR"]
    target_spacing: tuple[float, float, float] | None = Field(
        default=None, description="(i, j, k) mm; None keeps the volume's spacing")
    interpolation: Literal["linear", "bspline", "nearest"] = "linear"
    ct_clip: tuple[float, float] | None = None
    ct_mean: float | None = None
    ct_std: float | None = None
    mr_normalisation: Literal["zscore-body", "zscore"] = "zscore-body"
    fingerprint_sha256: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PreprocessingPlan:
        if self.target_spacing is not None and min(self.target_spacing) <= 0:
            raise ValueError("target_spacing must be positive")
        if self.ct_clip is not None and self.ct_clip[0] >= self.ct_clip[1]:
            raise ValueError("ct_clip must be (low, high) with low < high")
        if self.ct_std is not None and self.ct_std <= 0:
            raise ValueError("ct_std must be positive")
        return self

    # -- derivation and storage --------------------------------------------------------------
    @classmethod
    def from_fingerprint(cls, fp: dict[str, Any], modality: str) -> PreprocessingPlan:
        m = modality.upper()
        pooled = (fp.get("pooled") or {}).get(m)
        if not pooled:
            raise InvalidInput(f"the fingerprint has no {m} series to plan from")
        spacing = pooled["spacing_mm"]["median"]
        digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
        kw: dict[str, Any] = {"modality": m, "target_spacing": tuple(spacing),
                              "fingerprint_sha256": digest}
        if m == "CT":
            it = pooled["intensity_body"]
            kw.update(ct_clip=(it["p0.5"], it["p99.5"]), ct_mean=it["mean"],
                      ct_std=max(it["std"], 1e-6))
        return cls(**kw)

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> PreprocessingPlan:
        try:
            return cls.model_validate_json(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"invalid preprocessing plan {path}: {exc}") from exc

    # -- application -------------------------------------------------------------------------
    def apply(self, volume: Volume) -> Volume:
        """Resample to the target spacing, then clip/normalise; float32 out."""
        vol = self.resample(volume)
        a = vol.array.astype(np.float32, copy=True)
        if self.modality == "CT":
            if self.ct_clip is not None:
                np.clip(a, self.ct_clip[0], self.ct_clip[1], out=a)
            if self.ct_mean is not None and self.ct_std is not None:
                a = (a - np.float32(self.ct_mean)) / np.float32(self.ct_std)
        else:
            if self.mr_normalisation == "zscore-body":
                p99 = float(np.percentile(a, 99)) if a.size else 0.0
                mask = a > 0.1 * p99 if p99 > 0 else np.ones(a.shape, bool)
            else:
                mask = np.ones(a.shape, bool)
            sel = a[mask]
            mean, std = (float(sel.mean()), float(sel.std())) if sel.size else (0.0, 1.0)
            a = (a - np.float32(mean)) / np.float32(max(std, 1e-8))
        out = vol.with_array(a.astype(np.float32, copy=False))
        out.meta["plan"] = self.model_dump(mode="json")
        return out

    def resample(self, volume: Volume) -> Volume:
        if self.target_spacing is None or np.allclose(volume.spacing, self.target_spacing, rtol=1e-4):
            return volume
        import SimpleITK as sitk

        img = volume.to_sitk()
        img = sitk.Cast(img, sitk.sitkFloat32)
        new_sp = tuple(float(s) for s in self.target_spacing)
        size = [max(1, int(round(n * s / t)))
                for n, s, t in zip(img.GetSize(), img.GetSpacing(), new_sp, strict=True)]
        interp = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline,
                  "nearest": sitk.sitkNearestNeighbor}[self.interpolation]
        fill = float(np.min(volume.array)) if volume.array.size else 0.0
        out = sitk.Resample(img, size, sitk.Transform(), interp, img.GetOrigin(), new_sp,
                            img.GetDirection(), fill, sitk.sitkFloat32)
        res = Volume.from_sitk(out, modality=volume.modality,
                               series_instance_uid=volume.series_instance_uid,
                               meta=dict(volume.meta))
        # provenance: the nearest source slice of each resampled slice
        if volume.sop_instance_uids:
            src = np.arange(volume.shape[0]) * volume.spacing[2]
            dst = np.arange(res.shape[0]) * res.spacing[2]
            near = np.clip(np.rint(np.interp(dst, src, np.arange(len(src)))).astype(int), 0,
                           len(src) - 1)
            res.sop_instance_uids = [volume.sop_instance_uids[i] for i in near]
            res.frame_numbers = [volume.frame_numbers[i] for i in near] if volume.frame_numbers else []
        return res
