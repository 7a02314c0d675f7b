"""The :class:`Volume`: a 3D image on a patient-space grid, with per-slice provenance.

Conventions (the ones SimpleITK and ITK use, so conversions are exact):

* ``array`` is indexed ``[k, j, i]`` = (slice, row, column);
* ``spacing`` is ``(di, dj, dk)`` in mm: column spacing, row spacing, slice spacing;
* ``origin`` is the patient-space (DICOM LPS, PS3.3 C.7.6.2.1.1) position of voxel (0, 0, 0);
* ``direction`` is a 3x3 matrix whose *columns* are the LPS unit vectors of the i, j and k axes
  (i = along a row, ImageOrientationPatient[0:3]; j = down a column, [3:6]; k = slice normal);
* ``affine`` maps voxel ``(i, j, k, 1)`` to LPS mm; ``affine_ras`` to RAS (NIfTI, MONAI).

``sop_instance_uids[k]`` / ``frame_numbers[k]`` name the source of slice ``k`` (frame numbers are
1-based for multi-frame objects, 0 for single-frame instances).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    sop_instance_uids: list[str] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    modality: str = ""
    series_instance_uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(v) for v in self.origin)  # type: ignore[assignment]

    # -- geometry ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(k, j, i)`` sizes, like ``array.shape``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel ``(i, j, k)`` -> LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel ``(i, j, k)`` -> RAS mm (the NIfTI / MONAI convention)."""
        return LPS_TO_RAS @ self.affine

    def world(self, ijk: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """LPS position of voxel index ``(i, j, k)``."""
        v = np.asarray(ijk, dtype=np.float64)
        return self.affine[:3, :3] @ v + self.affine[:3, 3]

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy sharing the geometry (and provenance) with a new voxel array."""
        return replace(self, array=array, meta=dict(self.meta), **changes)

    def reversed_k(self) -> Volume:
        """The same voxels walked along -k (a DICOM series of a left-handed grid loads so)."""
        d = self.direction.copy()
        d[:, 2] *= -1
        return replace(self, array=self.array[::-1], origin=tuple(self.world((0, 0, self.shape[0] - 1))),
                       direction=d, sop_instance_uids=self.sop_instance_uids[::-1],
                       frame_numbers=self.frame_numbers[::-1], meta=dict(self.meta))

    def same_geometry(self, other: Volume, *, atol: float = 1e-4) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, atol=atol)
                and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))

    # -- conversions -------------------------------------------------------------------------
    def to_sitk(self):  # noqa: ANN201 - SimpleITK.Image
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.flatten()))
        return img

    @classmethod
    def from_sitk(cls, img, **kw: Any) -> Volume:  # noqa: ANN001
        import SimpleITK as sitk

        if img.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a scalar image (one component per voxel)")
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.array(img.GetDirection()).reshape(3, 3),
            **kw,
        )

    def to_nifti(self):  # noqa: ANN201 - nibabel.Nifti1Image
        import nibabel as nib

        data = np.ascontiguousarray(self.array.transpose(2, 1, 0))
        img = nib.Nifti1Image(data, self.affine_ras)
        img.header.set_xyzt_units("mm")
        img.set_qform(self.affine_ras, code=1)
        img.set_sform(self.affine_ras, code=1)
        return img

    @classmethod
    def from_nifti(cls, img, **kw: Any) -> Volume:  # noqa: ANN001
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"expected a 3D NIfTI image, got shape {data.shape}")
        return cls.from_ras_affine(data.transpose(2, 1, 0), np.asarray(img.affine), **kw)

    @classmethod
    def from_ras_affine(cls, array_kji: np.ndarray, affine_ras: np.ndarray, **kw: Any) -> Volume:
        lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
        m = lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("affine has a zero-length axis")
        return cls(array=np.asarray(array_kji), spacing=tuple(spacing), origin=tuple(lps[:3, 3]),
                   direction=m / spacing, **kw)

    def to_metatensor(self):  # noqa: ANN201 - monai.data.MetaTensor
        """A channel-less MONAI MetaTensor ``(i, j, k)`` with a RAS affine (MONAI's default)."""
        import torch
        from monai.data import MetaTensor
        from monai.utils import SpaceKeys

        t = torch.as_tensor(np.ascontiguousarray(self.array.transpose(2, 1, 0)))
        meta = {
            "space": SpaceKeys.RAS,
            "original_affine": self.affine_ras,
            "spatial_shape": np.array(self.array.shape[::-1]),
            "modality": self.modality,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uids": list(self.sop_instance_uids),
        }
        return MetaTensor(t, affine=torch.as_tensor(self.affine_ras), meta=meta)

    @classmethod
    def from_metatensor(cls, mt, **kw: Any) -> Volume:  # noqa: ANN001
        arr = mt.detach().cpu().numpy()
        if arr.ndim == 4 and arr.shape[0] == 1:  # channel-first
            arr = arr[0]
        if arr.ndim != 3:
            raise ValueError(f"expected a 3D MetaTensor, got shape {arr.shape}")
        affine = np.asarray(mt.affine, dtype=np.float64)
        space = str(mt.meta.get("space", "RAS")).upper()
        if space.endswith("LPS"):
            affine = LPS_TO_RAS @ affine
        kw.setdefault("sop_instance_uids", list(mt.meta.get("sop_instance_uids", [])))
        kw.setdefault("modality", str(mt.meta.get("modality", "")))
        kw.setdefault("series_instance_uid", str(mt.meta.get("series_instance_uid", "")))
        return cls.from_ras_affine(arr.transpose(2, 1, 0), affine, **kw)
