"""Segmentation of one blob-like finding from its detection: 3D region growing in a box.

A detector reports a centre and a diameter; :func:`grow_region` finds the object's boundary in
the image around that point:

1. a box of about twice the reported diameter (at least 5 voxels each way) around the centre;
2. a threshold from local intensity statistics: half-way between the bright core near the centre
   (the 90th percentile within a quarter diameter) and the background of the box (its 20th
   percentile); for CT it is kept at or above ``min_hu`` (-750 HU: solid nodules are denser than
   about -400 HU, ground glass about -600 HU, aerated lung about -850 HU; a solid nodule in lung
   thus gets about -420 HU, a ground-glass one about -730 HU);
3. the connected component (26-connectivity) above the threshold that contains the seed (the
   voxel above threshold nearest the centre), its holes filled;
4. where it touches the box or is over three times the reported volume (a nodule attached to a vessel or the pleura leaks along them), the
   mask is opened with growing balls (radius 1-3 voxels) and the seed's component kept, then
   grown back within the threshold mask by as much as it was eroded;
5. no boundary — nothing above the threshold near the centre, a component that still leaks to
   the box, one over three times the reported volume or one implausibly small — gives a sphere (an ellipsoid on anisotropic voxels) of
   the reported diameter, with ``ok = False`` and the reason, so callers can say so.

:func:`measure` gives the long-axis diameter (maximum Feret diameter, voxel-extent corrected)
and the volume of a mask. Everything is in the volume's patient space (DICOM LPS mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hounsfield.errors import InvalidInput
from hounsfield.imaging.volume import Volume

MIN_HU = -750.0           # CT threshold floor: above aerated lung (~-850 HU), below ground glass (~-600 HU)
MIN_FILL = 0.04           # a grown region under 4 % of the reported sphere is noise, not a boundary
MAX_FILL = 3.0            # one over 3 x the reported sphere has leaked (into a vessel, the wall)
SPHERE_REASON = "no boundary found: sphere of the reported diameter"


@dataclass
class Region:
    """A segmented finding: a boolean ``mask`` over ``box`` (slices into the volume ``[k, j, i]``).

    ``ok`` is False when no boundary was found and the mask is the fallback sphere; ``reason``
    says why (or how the region was grown); ``threshold`` is the intensity used (None for the
    sphere).
    """

    mask: np.ndarray
    box: tuple[slice, slice, slice]
    ok: bool
    reason: str
    threshold: float | None = None

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The mask pasted into an all-False array of the volume's ``shape``."""
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.mask
        return out

    def voxels_kji(self) -> np.ndarray:
        """``(n, 3)`` integer ``(k, j, i)`` indices of the mask's voxels in the volume."""
        idx = np.argwhere(self.mask)
        return idx + np.array([s.start for s in self.box])


@dataclass
class Measurements:
    """Size of a segmented region: ``long_axis_mm`` (max Feret diameter), ``volume_mm3``, the
    long axis' two end points (LPS mm) and the region's centroid (LPS mm)."""

    long_axis_mm: float
    volume_mm3: float
    long_axis_endpoints: np.ndarray
    centroid: np.ndarray


def voxel_of(volume: Volume, xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """The continuous ``(i, j, k)`` voxel index of a patient-space (LPS mm) point."""
    return np.linalg.solve(volume.affine[:3, :3], np.asarray(xyz_mm, float) - volume.affine[:3, 3])


def _sphere(volume: Volume, ijk: np.ndarray, diameter_mm: float,
            box: tuple[slice, slice, slice]) -> np.ndarray:
    """Voxels of ``box`` whose centres lie within ``diameter_mm / 2`` of ``ijk`` (in mm)."""
    kk, jj, ii = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    d = np.stack([ii - ijk[0], jj - ijk[1], kk - ijk[2]], axis=-1).astype(np.float64)
    mm = d @ (volume.direction @ np.diag(volume.spacing)).T
    inside = np.einsum("...a,...a->...", mm, mm) <= (diameter_mm / 2.0) ** 2
    nearest = tuple(int(np.clip(round(float(c)) - s.start, 0, s.stop - s.start - 1))
                    for c, s in zip(ijk[::-1], box, strict=True))
    inside[nearest] = True  # at least the voxel nearest the centre
    return inside


def _ball(radius: int) -> np.ndarray:
    g = np.arange(-radius, radius + 1)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    return (x * x + y * y + z * z) <= radius * radius + 0.5


def _touches_box(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def _component(binary: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    lab, _ = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    v = lab[seed]
    return lab == v if v else np.zeros_like(binary)


def grow_region(volume: Volume, centre_xyz_mm: tuple[float, float, float], diameter_mm: float,
                *, min_hu: float | None = None) -> Region:
    """Segment the object detected at ``centre_xyz_mm`` (LPS mm) of ``diameter_mm``.

    ``min_hu`` is the threshold floor (default :data:`MIN_HU` for CT, none otherwise). Returns a
    :class:`Region`; where no boundary is found it is the sphere of the reported diameter with
    ``ok = False`` and a reason starting with "no boundary found". Raises
    :class:`~hounsfield.errors.InvalidInput` for a non-positive diameter or a centre outside
    the volume.
    """
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise InvalidInput(f"diameter must be a positive number of mm, got {diameter_mm!r}")
    ijk = voxel_of(volume, centre_xyz_mm)
    nk, nj, ni = volume.shape
    centre_kji = np.round(ijk[::-1]).astype(int)
    if np.any(centre_kji < 0) or np.any(centre_kji >= (nk, nj, ni)):
        raise InvalidInput(f"finding centre {tuple(round(float(v), 1) for v in centre_xyz_mm)} mm "
                           f"lies outside the volume (voxel {tuple(int(v) for v in ijk.round())})")
    if min_hu is None and volume.modality == "CT":
        min_hu = MIN_HU
    spacing_kji = np.array(volume.spacing[::-1])
    half = np.maximum(np.ceil(diameter_mm / spacing_kji).astype(int), 5)  # box ~2 x diameter
    box = tuple(slice(int(max(c - h, 0)), int(min(c + h + 1, n)))
                for c, h, n in zip(centre_kji, half, (nk, nj, ni), strict=True))
    sub = np.asarray(volume.array[box], dtype=np.float32)
    sphere = _sphere(volume, ijk, diameter_mm, box)

    def fallback(why: str) -> Region:
        return Region(sphere, box, False, f"{SPHERE_REASON} ({why})")

    core_zone = _sphere(volume, ijk, max(diameter_mm / 2.0, 2.0 * min(volume.spacing)), box)
    core = float(np.percentile(sub[core_zone], 90))
    background = float(np.percentile(sub, 20))
    threshold = (core + background) / 2.0
    if min_hu is not None:
        threshold = max(threshold, min_hu)
    if core <= threshold or core - background < 1e-6:
        return fallback("nothing above the threshold near the centre")
    binary = sub > threshold
    # seed: the above-threshold voxel nearest the centre, within the core zone
    cand = np.argwhere(binary & core_zone)
    if cand.size == 0:
        return fallback("nothing above the threshold near the centre")
    local = ijk[::-1] - np.array([s.start for s in box])
    seed = tuple(cand[np.argmin(((cand - local) ** 2 * spacing_kji ** 2).sum(1))])
    region = ndimage.binary_fill_holes(_component(binary, seed))
    how = f"region grown above {threshold:.0f}"
    most = MAX_FILL * sphere.sum()

    def leaks(m: np.ndarray) -> bool:
        return _touches_box(m) or m.sum() > most

    if leaks(region):
        for r in (1, 2, 3):
            opened = ndimage.binary_opening(binary, structure=_ball(r))
            if not opened[seed]:
                break
            part = _component(opened, seed)
            part = ndimage.binary_fill_holes(ndimage.binary_dilation(part, structure=_ball(r),
                                                                     mask=binary))
            if not leaks(part):
                region, how = part, f"{how}, detached by opening (r={r} voxels)"
                break
        if _touches_box(region):
            return fallback("the region leaks to the edge of the search box")
        if region.sum() > most:
            return fallback(f"the region is over {MAX_FILL:g} times the reported volume")
    region = ndimage.binary_closing(region, structure=_ball(1), border_value=0) | region
    if region.sum() < max(MIN_FILL * sphere.sum(), 1):
        return fallback("the grown region is implausibly small")
    return Region(region, box, True, how, threshold)


def measure(volume: Volume, region: Region) -> Measurements:
    """Long-axis diameter (maximum Feret diameter over the voxel centres of the region, plus the
    mean voxel size along that axis) and volume (voxel count x voxel volume) in the patient space."""
    idx = region.voxels_kji()
    if len(idx) == 0:
        raise InvalidInput("empty region: nothing to measure")
    m = volume.direction @ np.diag(volume.spacing)
    pts = idx[:, ::-1].astype(np.float64) @ m.T + volume.affine[:3, 3]
    hull = _hull_points(pts)
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
    axis = hull[b] - hull[a]
    length = float(np.sqrt(d2[a, b]))
    u = axis / length if length > 0 else np.array([1.0, 0.0, 0.0])
    # voxel centres underestimate the extent by about one voxel along the axis
    extent = float(np.linalg.norm(np.linalg.solve(m, u) * np.square(volume.spacing)) /
                   max(np.linalg.norm(np.linalg.solve(m, u) * np.asarray(volume.spacing)), 1e-12))
    ends = np.stack([hull[a] - u * extent / 2, hull[b] + u * extent / 2])
    voxel_mm3 = float(np.prod(volume.spacing))
    return Measurements(long_axis_mm=length + extent, volume_mm3=len(idx) * voxel_mm3,
                        long_axis_endpoints=ends, centroid=pts.mean(axis=0))


def _hull_points(pts: np.ndarray) -> np.ndarray:
    """Points on the convex hull (the Feret diameter's ends are among them); all when few."""
    if len(pts) <= 64:
        return pts
    from scipy.spatial import ConvexHull, QhullError

    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # flat (one slice or one row): every point can be an end
        return pts


def outline(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask as ``(n, 2)`` arrays of ``(column, row)`` pixel
    coordinates along the pixel edges (each outline closes: last point == first), largest
    first. Traces the boundary between mask and background pixels (square tracing)."""
    m = np.pad(np.asarray(mask2d, bool), 1)
    # directed boundary edges on the pixel-corner grid, walking with the mask on the left
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rr, cc = np.nonzero(m[1:-1, 1:-1])
    for r, c in zip((rr + 1).tolist(), (cc + 1).tolist(), strict=True):
        x, y = c - 1, r - 1  # pixel (r, c) spans corners x..x+1, y..y+1
        if not m[r - 1, c]:
            edges.setdefault((x + 1, y), []).append((x, y))          # top, leftwards
        if not m[r + 1, c]:
            edges.setdefault((x, y + 1), []).append((x + 1, y + 1))  # bottom, rightwards
        if not m[r, c - 1]:
            edges.setdefault((x, y), []).append((x, y + 1))          # left, downwards
        if not m[r, c + 1]:
            edges.setdefault((x + 1, y + 1), []).append((x + 1, y))  # right, upwards
    loops = []
    while edges:
        start = next(iter(edges))
        loop, p = [start], start
        while True:
            nxt = edges[p].pop()
            if not edges[p]:
                del edges[p]
            loop.append(nxt)
            p = nxt
            if p == start or p not in edges:
                break
        loops.append(_drop_collinear(np.array(loop, dtype=np.float64)))
    loops.sort(key=lambda a: -abs(_area(a)))
    return loops


def _area(loop: np.ndarray) -> float:
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _drop_collinear(loop: np.ndarray) -> np.ndarray:
    """The closed loop without the corners where it goes straight on (same shape, fewer points)."""
    pts = loop[:-1]
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    keep = pts[cross != 0]
    return np.vstack([keep, keep[:1]]) if len(keep) else loop
