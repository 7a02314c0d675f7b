"""A regular sampling grid in patient coordinates (the geometry of a CT series).

Arrays are indexed ``[z, y, x]`` (slice, row, column).  ``origin`` is the centre of voxel
``[0, 0, 0]`` in mm; rows run along +y and columns along +x (ImageOrientationPatient
``1\\0\\0\\0\\1\\0``, PS3.3 C.7.6.2), slices along +z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    origin: tuple[float, float, float]    # x, y, z of voxel [0, 0, 0]
    spacing: tuple[float, float, float]   # dx (column), dy (row), dz (slice)
    shape: tuple[int, int, int]           # nz, ny, nx

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates of the columns (x), rows (y) and slices (z)."""
        nz, ny, nx = self.shape
        (x0, y0, z0), (dx, dy, dz) = self.origin, self.spacing
        return (x0 + dx * np.arange(nx), y0 + dy * np.arange(ny), z0 + dz * np.arange(nz))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[int, int], ...] | None:
        """Index ranges ``((z0, z1), (y0, y1), (x0, x1))`` of the voxels within [lo, hi] mm."""
        out = []
        for axis, n in ((2, self.shape[0]), (1, self.shape[1]), (0, self.shape[2])):
            o, s = self.origin[axis], self.spacing[axis]
            i0 = max(int(np.floor((lo[axis] - o) / s)), 0)
            i1 = min(int(np.ceil((hi[axis] - o) / s)) + 1, n)
            if i1 <= i0:
                return None
            out.append((i0, i1))
        return tuple(out)

    def axes_in(self, box: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, ...]:
        (z0, z1), (y0, y1), (x0, x1) = box
        (ox, oy, oz), (dx, dy, dz) = self.origin, self.spacing
        return (ox + dx * np.arange(x0, x1), oy + dy * np.arange(y0, y1),
                oz + dz * np.arange(z0, z1))

    def index_of(self, point: np.ndarray) -> tuple[int, int, int]:
        """The (z, y, x) index of the voxel containing ``point`` (x, y, z mm), clipped."""
        idx = []
        for axis, n in ((2, self.shape[0]), (1, self.shape[1]), (0, self.shape[2])):
            i = int(np.floor((point[axis] - self.origin[axis]) / self.spacing[axis] + 0.5))
            idx.append(min(max(i, 0), n - 1))
        return tuple(idx)  # type: ignore[return-value]

    def contains(self, point: np.ndarray) -> bool:
        """Whether ``point`` (x, y, z mm) lies inside the grid's voxels."""
        for axis, n in ((2, self.shape[0]), (1, self.shape[1]), (0, self.shape[2])):
            i = (point[axis] - self.origin[axis]) / self.spacing[axis]
            if not -0.5 <= i < n - 0.5:
                return False
        return True

    def affine_lps(self) -> np.ndarray:
        """4x4 voxel (i=x, j=y, k=z index) -> patient LPS mm."""
        a = np.eye(4)
        a[0, 0], a[1, 1], a[2, 2] = self.spacing
        a[:3, 3] = self.origin
        return a
