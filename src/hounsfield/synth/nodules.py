"""Lung nodules: how many, what kind, where — and drawing them with their truth mask.

Kinds follow Fleischner / Lung-RADS terms: ``solid``, ``part-solid`` (ground glass with a
solid core) and ``ground-glass``.  Shapes: ``round``, ``lobulated`` (a few smooth bumps on the
surface) and ``spiculated`` (thin strands radiating out).  Locations: ``isolated`` (well inside
the lung), ``juxtapleural`` (touching the pleura / chest wall) and ``juxtavascular`` (touching
a vessel).  Diameters 3-30 mm, skewed to small ones; 0-5 per scan, a quarter of scans none.

``diameter_mm`` is the nodule body's volume-equivalent diameter: the surface radius
``R(u)`` over directions ``u`` is scaled so that the mean of ``R(u)^3`` equals ``(d/2)^3``.
Spicules are drawn in the image but are not part of the body (nor of the mask), as a
radiologist's diameter excludes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from hounsfield.synth.anatomy import Body, Tissue, classify
from hounsfield.synth.grid import Grid
from hounsfield.synth.trees import Tubes, paint

Kind = Literal["solid", "part-solid", "ground-glass"]
Shape = Literal["round", "lobulated", "spiculated"]
Location = Literal["isolated", "juxtapleural", "juxtavascular"]

COUNT_P = (0.25, 0.3, 0.2, 0.12, 0.08, 0.05)   # P(0..5 nodules)


@dataclass
class Nodule:
    """One nodule in phantom coordinates (mm)."""

    centre: np.ndarray                 # x, y, z
    diameter: float
    kind: Kind
    shape: Shape
    location: Location
    hu: float                          # solid part (solid / core) or the ground glass
    core_fraction: float = 0.0         # part-solid: core radius / body radius
    lobe_dirs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    lobe_amps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: float = 1.0                 # R(u) = scale * (1 + sum of lobes)
    spicules: list[tuple] = field(default_factory=list)

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface radius along unit directions ``u`` (..., 3)."""
        r = np.ones(u.shape[:-1])
        for v, amp in zip(self.lobe_dirs, self.lobe_amps):
            r = r + amp * np.exp(6.0 * (u @ v - 1.0))
        return self.scale * r


def _fixed_dirs(n: int = 4000) -> np.ndarray:
    g = np.random.default_rng(12345).standard_normal((n, 3))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


_DIRS = _fixed_dirs()  # a fixed quadrature of directions (read-only) for volume integrals


def _normalise(n: Nodule) -> None:
    """Set ``scale`` so that the body's volume equals that of a sphere of the diameter."""
    n.scale = 1.0
    mean_r3 = float(np.mean(n.radius(_DIRS) ** 3))
    n.scale = (n.diameter / 2.0) / mean_r3 ** (1.0 / 3.0)


def _random_unit(rng: np.random.Generator, k: int) -> np.ndarray:
    v = rng.standard_normal((k, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class LungMap:
    """Distance inside the lungs to the nearest non-lung tissue, on a coarse grid (placement)."""

    STEP = 2.5

    def __init__(self, body: Body, tubes: list[Tubes]) -> None:
        ca, cb = body.cavity
        s = self.STEP
        self.grid = Grid((-ca, -cb, body.z_base), (s, s, s),
                         (int(body.lung_height / s) + 2, int(2 * cb / s) + 2, int(2 * ca / s) + 2))
        xs, ys, zs = self.grid.axes()
        lab, hu = classify(body, xs[None, None, :], ys[None, :, None], zs[:, None, None])
        hu = np.zeros(lab.shape, np.float32)
        for t in tubes:  # the aorta, airways and big vessels are not lung for placement
            if t.kind in ("aorta", "airway-wall", "artery", "vein"):
                paint(hu, lab, self.grid, t.subset(np.maximum(t.ra, t.rb) >= 2.0), np.zeros(3))
        self.lung = lab == Tissue.LUNG
        self.dist = ndimage.distance_transform_edt(self.lung, sampling=s).astype(np.float32)

    def distance(self, p: np.ndarray) -> float:
        z, y, x = self.grid.index_of(p)
        return float(self.dist[z, y, x])

    def points_where(self, lo: float, hi: float) -> np.ndarray:
        idx = np.argwhere((self.dist >= lo) & (self.dist <= hi))
        xs, ys, zs = self.grid.axes()
        return np.stack([xs[idx[:, 2]], ys[idx[:, 1]], zs[idx[:, 0]]], axis=1)


def sample_nodules(rng: np.random.Generator, body: Body, tubes: list[Tubes],
                   count: int | None = None) -> list[Nodule]:
    """Draw ``count`` nodules (or a realistic random count) and place them in the lungs."""
    if count is None:
        count = int(rng.choice(len(COUNT_P), p=COUNT_P))
    if count == 0:
        return []
    lmap = LungMap(body, tubes)
    vessels = [t for t in tubes if t.kind in ("artery", "vein")]
    va = np.concatenate([t.a for t in vessels])
    vb = np.concatenate([t.b for t in vessels])
    vr = np.concatenate([t.rb for t in vessels])
    out: list[Nodule] = []
    for _ in range(count):
        for _attempt in range(30):
            n = _draw(rng)
            centre = _place(rng, n.location, n.diameter / 2, lmap, va, vb, vr)
            if centre is None:
                continue
            if any(np.linalg.norm(centre - o.centre) < (n.diameter + o.diameter) / 2 + 5.0
                   for o in out):
                continue
            n.centre = centre
            _decorate(rng, n)
            out.append(n)
            break
    return out


def _draw(rng: np.random.Generator) -> Nodule:
    d = float(3.0 * 10 ** (rng.random() ** 1.6))
    kind = str(rng.choice(["solid", "part-solid", "ground-glass"], p=[0.65, 0.15, 0.2]))
    p_spic = 0.1 if d < 8 else 0.35
    shape = str(rng.choice(["round", "lobulated", "spiculated"],
                           p=[0.6 - p_spic, 0.4, p_spic]))
    location = str(rng.choice(["isolated", "juxtapleural", "juxtavascular"], p=[0.5, 0.3, 0.2]))
    if kind == "solid":
        hu = float(rng.uniform(10.0, 60.0))
    else:
        hu = float(rng.uniform(-680.0, -450.0))
    core = float(rng.uniform(0.35, 0.65)) if kind == "part-solid" else 0.0
    return Nodule(np.zeros(3), d, kind, shape, location, hu, core)  # type: ignore[arg-type]


def _place(rng, location: str, r: float, lmap: LungMap, va, vb, vr) -> np.ndarray | None:
    s = LungMap.STEP
    if location == "juxtavascular":
        ok = (vr > 0.8) & (vr < 4.0)
        idx = np.flatnonzero(ok)
        for _ in range(40):
            if not len(idx):
                break
            i = int(rng.choice(idx))
            t = rng.uniform(0.2, 0.8)
            p = va[i] + t * (vb[i] - va[i])
            axis = vb[i] - va[i]
            axis = axis / (np.linalg.norm(axis) or 1.0)
            perp = np.cross(axis, _random_unit(rng, 1)[0])
            perp /= np.linalg.norm(perp) or 1.0
            c = p + (vr[i] + 0.85 * r) * perp
            if lmap.distance(c) >= r + s:
                return c
        location = "isolated"
    if location == "juxtapleural":
        cands = lmap.points_where(0.55 * r, max(0.95 * r, 0.55 * r + s))
    else:
        cands = lmap.points_where(r + 5.0, np.inf)
    if not len(cands):
        return None
    c = cands[int(rng.integers(len(cands)))]
    return c + rng.uniform(-s / 2, s / 2, 3) * (location != "juxtapleural")


def _decorate(rng: np.random.Generator, n: Nodule) -> None:
    if n.shape in ("lobulated", "spiculated"):
        k = int(rng.integers(3, 7))
        n.lobe_dirs = _random_unit(rng, k)
        n.lobe_amps = rng.uniform(0.12, 0.3, k) * (1.0 if n.shape == "lobulated" else 0.5)
    _normalise(n)
    if n.shape == "spiculated":
        k = int(rng.integers(5, 13))
        dirs = _random_unit(rng, k)
        radii = n.radius(dirs)
        r = n.diameter / 2
        for u, rr in zip(dirs, radii):
            length = rng.uniform(0.5, 1.3) * r + 2.0
            n.spicules.append((n.centre + 0.8 * rr * u, n.centre + (rr + length) * u,
                               float(rng.uniform(0.35, 0.7)), 0.15))


def render(vol: np.ndarray, mask: np.ndarray | None, grid: Grid, nodules: list[Nodule],
           offset: np.ndarray, lab: np.ndarray | None = None) -> None:
    """Draw nodules into ``vol`` (max-blend, so vessels through ground glass stay visible) and
    their instance labels (1, 2, ...) into ``mask``: voxels whose centre lies in the body,
    plus always the voxel containing the centre."""
    w = float(min(grid.spacing[0], grid.spacing[1]))
    for i, n in enumerate(nodules, start=1):
        c = n.centre + offset
        rmax = float(n.scale * (1.0 + n.lobe_amps.sum())) + w
        if n.spicules:
            solid = Tubes.from_lists([(a + offset, b + offset, ra, rb) for a, b, ra, rb in n.spicules],
                                     n.hu if n.kind == "solid" else 20.0, Tissue.NODULE)
            _paint_max(vol, grid, solid)
        box = grid.box(c - rmax, c + rmax)
        if box is None:
            continue
        (z0, z1), (y0, y1), (x0, x1) = box
        xs, ys, zs = grid.axes_in(box)
        px = (xs - c[0])[None, None, :]
        py = (ys - c[1])[None, :, None]
        pz = (zs - c[2])[:, None, None]
        d = np.sqrt(px * px + py * py + pz * pz)
        u = np.stack(np.broadcast_arrays(px, py, pz), axis=-1) / np.maximum(d, 1e-6)[..., None]
        rad = n.radius(u)
        occ = np.clip((rad - d) / w + 0.5, 0.0, 1.0).astype(np.float32)
        sub = vol[z0:z1, y0:y1, x0:x1]
        if n.kind == "part-solid":
            ggo = np.float32(n.hu)
            core = np.clip((n.core_fraction * rad - d) / w + 0.5, 0.0, 1.0).astype(np.float32)
            target = ggo + (np.float32(35.0) - ggo) * core
        else:
            target = np.float32(n.hu)
        np.maximum(sub, sub + (target - sub) * occ, out=sub)
        body = d <= rad
        if mask is not None:
            mask[z0:z1, y0:y1, x0:x1][body] = i
            if grid.contains(c):
                mask[grid.index_of(c)] = i
        if lab is not None:
            lab[z0:z1, y0:y1, x0:x1][body] = np.uint8(Tissue.NODULE)


def _paint_max(vol: np.ndarray, grid: Grid, tubes: Tubes) -> None:
    """Paint each tube, keeping the brighter of old and new value (a strand through vessels)."""
    for a, b, ra, rb in zip(tubes.a, tubes.b, tubes.ra, tubes.rb):
        box = grid.box(np.minimum(a, b) - ra - 2, np.maximum(a, b) + ra + 2)
        if box is None:
            continue
        (z0, z1), (y0, y1), (x0, x1) = box
        before = vol[z0:z1, y0:y1, x0:x1].copy()
        one = Tubes(a[None], b[None], np.array([ra]), np.array([rb]), tubes.hu, tubes.label)
        paint(vol, None, grid, one, np.zeros(3))
        np.maximum(vol[z0:z1, y0:y1, x0:x1], before, out=vol[z0:z1, y0:y1, x0:x1])
