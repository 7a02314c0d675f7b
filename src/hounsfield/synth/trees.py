"""Tubular anatomy: vessel and airway trees, trachea, aorta, ribs — and the tube painter.

Trees grow by territory splitting: each branch owns a cloud of points sampled inside its lung;
it runs towards the cloud's centroid, then splits the cloud in two across its longest axis and
hands one half to each child.  Radii follow Murray's law (r^3 proportional to the territory),
so the tree fills the lung from the hilum outwards, tapering to sub-millimetre vessels — the
branching structure that makes vessels the main source of false-positive nodule detections.

A :class:`Tubes` set is a list of tapered capsules (segment a->b, radius ra->rb) with one HU
and one tissue label; :func:`paint` draws them into a volume with partial-volume edges, each
one inside its own bounding box (cost proportional to the tube's size, not the volume's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hounsfield.synth.anatomy import Body, Tissue, classify, tissue_hu
from hounsfield.synth.grid import Grid

CHUNK = 262_144   # voxels per vectorised batch of capsules
PIECE = 12.0      # longest piece of a tube, in (radius + voxel) units


@dataclass
class Tubes:
    """Capsules a->b with radii ra->rb (mm), drawn with ``hu`` and labelled ``label``."""

    a: np.ndarray      # (n, 3) x, y, z
    b: np.ndarray      # (n, 3)
    ra: np.ndarray     # (n,)
    rb: np.ndarray     # (n,)
    hu: float
    label: Tissue
    kind: str = ""

    @classmethod
    def from_lists(cls, segs: list[tuple], hu: float, label: Tissue, kind: str = "") -> Tubes:
        if not segs:
            z = np.zeros((0, 3))
            return cls(z, z.copy(), np.zeros(0), np.zeros(0), hu, label, kind)
        a = np.array([s[0] for s in segs], float)
        b = np.array([s[1] for s in segs], float)
        ra = np.array([s[2] for s in segs], float)
        rb = np.array([s[3] for s in segs], float)
        return cls(a, b, ra, rb, hu, label, kind)

    def scaled(self, factor: float, add: float, hu: float, label: Tissue, kind: str) -> Tubes:
        """The same centre lines with radii ``r * factor + add`` (e.g. an airway's wall)."""
        return Tubes(self.a, self.b, self.ra * factor + add, self.rb * factor + add, hu, label, kind)

    def subset(self, keep: np.ndarray) -> Tubes:
        return Tubes(self.a[keep], self.b[keep], self.ra[keep], self.rb[keep], self.hu,
                     self.label, self.kind)

    def __len__(self) -> int:
        return len(self.ra)


def paint(vol: np.ndarray, lab: np.ndarray | None, grid: Grid, tubes: Tubes,
          offset: np.ndarray) -> None:
    """Draw ``tubes`` into ``vol`` (HU, replaced by occupancy) and ``lab`` (where >= 1/2).

    ``offset`` converts phantom to grid (patient) coordinates.  Occupancy ramps over one
    in-plane pixel at the surface, a cheap partial-volume model; where tubes of one set
    overlap the larger occupancy counts (their union).  Long tubes are cut into pieces so each
    bounding box stays tight; boxes are computed many at a time.
    """
    if len(tubes) == 0:
        return
    w = float(min(grid.spacing[0], grid.spacing[1]))
    a, b, ra, rb = _split(tubes.a + offset, tubes.b + offset, tubes.ra, tubes.rb, w)
    r = np.maximum(ra, rb)[:, None] + w
    org = np.array(grid.origin)
    sp = np.array(grid.spacing)
    shp = np.array([grid.shape[2], grid.shape[1], grid.shape[0]])
    i0 = np.maximum(np.floor((np.minimum(a, b) - r - org) / sp).astype(int), 0)
    i1 = np.minimum(np.ceil((np.maximum(a, b) + r - org) / sp).astype(int) + 1, shp)
    size = i1 - i0
    keep = (size > 0).all(axis=1)
    a, b, ra, rb, i0, size = a[keep], b[keep], ra[keep], rb[keep], i0[keep], size[keep]
    if not len(a):
        return
    buf = np.zeros(vol.size, np.uint8)
    touched: list[np.ndarray] = []
    n_vox = size.prod(axis=1)
    ends = np.cumsum(n_vox)
    start = 0
    while start < len(a):  # chunks of ~256k voxels (cache-sized), each box exactly its size
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + CHUNK,
                                   side="right"))
        stop = max(stop, start + 1)
        sl = slice(start, stop)
        touched.append(_occupancy(buf, grid, a[sl], b[sl], ra[sl], rb[sl], i0[sl], size[sl], w))
        start = stop
    flat = np.concatenate(touched)
    if not len(flat):
        return
    occ = buf[flat].astype(np.float32) * np.float32(1.0 / 255.0)
    v = vol.reshape(-1)
    old = v[flat]
    v[flat] = old + (np.float32(tubes.hu) - old) * occ
    if lab is not None:
        lab.reshape(-1)[flat[occ >= 0.5]] = np.uint8(tubes.label)


def _occupancy(buf: np.ndarray, grid: Grid, a, b, ra, rb, i0, size, w: float) -> np.ndarray:
    """Occupancy of capsules (boxes ``size`` voxels from ``i0``, x/y/z order) into ``buf``
    (uint8, max over capsules); returns the flat indices written.  All boxes of the chunk are
    laid out as one ragged 1-D array, so no work is spent on padding."""
    (ox, oy, oz), (sx, sy, sz) = grid.origin, grid.spacing
    nz, ny, nx = grid.shape
    size = size.astype(np.int32)
    i0 = i0.astype(np.int32)
    n = size.prod(axis=1)
    seg = np.repeat(np.arange(len(n), dtype=np.int32), n)
    local = np.arange(int(n.sum()), dtype=np.int32) - np.repeat((np.cumsum(n) - n).astype(np.int32), n)
    bx = size[seg, 0]
    by = size[seg, 1]
    lx = local % bx
    rest = local // bx
    ly = rest % by
    lz = rest // by
    ix = i0[seg, 0] + lx
    iy = i0[seg, 1] + ly
    iz = i0[seg, 2] + lz
    ab = (b - a).astype(np.float32)
    ll = np.maximum((ab * ab).sum(axis=1), 1e-9)
    abn = ab / ll[:, None]
    af = a.astype(np.float32)
    px = (np.float32(ox) + np.float32(sx) * ix).astype(np.float32) - af[seg, 0]
    py = (np.float32(oy) + np.float32(sy) * iy).astype(np.float32) - af[seg, 1]
    pz = (np.float32(oz) + np.float32(sz) * iz).astype(np.float32) - af[seg, 2]
    t = px * abn[seg, 0] + py * abn[seg, 1] + pz * abn[seg, 2]
    np.clip(t, 0.0, 1.0, out=t)
    d2 = np.square(px - t * ab[seg, 0]) + np.square(py - t * ab[seg, 1]) \
        + np.square(pz - t * ab[seg, 2])
    rad = ra.astype(np.float32)[seg] + (rb - ra).astype(np.float32)[seg] * t
    occ = (rad - np.sqrt(d2)) * np.float32(1.0 / w) + np.float32(0.5)
    valid = occ > 0
    flat = (iz[valid].astype(np.int64) * ny + iy[valid]) * nx + ix[valid]
    q = (np.minimum(occ[valid], 1.0) * 255.0 + 0.5).astype(np.uint8)
    np.maximum.at(buf, flat, q)
    return flat


def _split(a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray, w: float):
    """Cut tubes into pieces no longer than PIECE (radius + voxel): a thin oblique tube's bounding
    box would otherwise be mostly empty space."""
    length = np.linalg.norm(b - a, axis=1)
    pieces = np.maximum(np.ceil(length / (PIECE * (np.maximum(ra, rb) + w))), 1).astype(int)
    if (pieces == 1).all():
        return a, b, ra, rb
    idx = np.repeat(np.arange(len(a)), pieces)
    start = (np.arange(len(idx)) - np.repeat(np.cumsum(pieces) - pieces, pieces)) / pieces[idx]
    stop = start + 1.0 / pieces[idx]
    d = (b - a)[idx]
    dr = (rb - ra)[idx]
    return (a[idx] + start[:, None] * d, a[idx] + stop[:, None] * d,
            ra[idx] + start * dr, ra[idx] + stop * dr)


def distance_to(tubes: Tubes, pts: np.ndarray) -> np.ndarray:
    """Signed distance (mm) from each point to the surface of the nearest tube (<0 inside)."""
    best = np.full(len(pts), np.inf)
    for a, b, ra, rb in zip(tubes.a, tubes.b, tubes.ra, tubes.rb):
        ab = b - a
        ll = float(ab @ ab) or 1e-9
        t = np.clip((pts - a) @ ab / ll, 0, 1)
        d = np.linalg.norm(pts - a - t[:, None] * ab, axis=1) - (ra + (rb - ra) * t)
        np.minimum(best, d, out=best)
    return best


def lung_points(rng: np.random.Generator, body: Body, side: int, n: int) -> np.ndarray:
    """``n`` points uniformly inside one lung (rejection sampling on :func:`classify`)."""
    ca, cb = body.cavity
    lo = np.array([0.0 if side > 0 else -ca, -cb, body.z_base])
    hi = np.array([ca if side > 0 else 0.0, cb, body.z_apex])
    out: list[np.ndarray] = []
    got = 0
    while got < n:
        p = lo + (hi - lo) * rng.random((4 * n, 3))
        lab, _ = classify(body, p[:, 0], p[:, 1], p[:, 2])
        keep = p[(lab == Tissue.LUNG) & (np.sign(p[:, 0]) == side)]
        out.append(keep)
        got += len(keep)
    return np.concatenate(out)[:n]


def grow_tree(start: np.ndarray, points: np.ndarray, r_root: float, *, r_min: float,
              leaf_n: int = 3, step: float = 0.45) -> list[tuple]:
    """Territory-splitting tree from ``start`` over ``points``; segments (a, b, ra, rb)."""
    n_all = len(points)
    segs: list[tuple] = []
    stack = [(start, points)]
    while stack:
        p, pts = stack.pop()
        n = len(pts)
        r = r_root * (n / n_all) ** (1.0 / 3.0)
        c = pts.mean(axis=0)
        if n <= leaf_n or r < r_min:
            segs.append((p, c, r, max(0.7 * r, 0.3)))
            continue
        q = p + step * (c - p)
        segs.append((p, q, r, r))
        centred = pts - c
        cov = centred.T @ centred
        axis = np.linalg.eigh(cov)[1][:, -1]
        side = centred @ axis < 0
        if side.all() or not side.any():
            segs.append((q, c, r, 0.7 * r))
            continue
        stack.append((q, pts[side]))
        stack.append((q, pts[~side]))
    return segs


def build_tubes(rng: np.random.Generator, body: Body, *, detail: float = 1.0) -> list[Tubes]:
    """All tubular anatomy of one patient, in paint order.

    ``detail`` scales the number of territory points (1.0 = full vessel tree, about 1 mm
    terminal branches; smaller values for quick previews).
    """
    blood = tissue_hu(Tissue.BLOOD, body.contrast)
    artery_hu = 260.0 if body.contrast else 40.0
    vein_hu = 160.0 if body.contrast else 38.0
    hx, hy, hz, rx, ry, rz, _ang = body.heart
    ca, cb = body.cavity
    zc = body.z_carina
    y_tr = body.spine_y - body.vertebra_r - 20.0
    out: list[Tubes] = []

    # pulmonary arteries: trunk from the right ventricle to the bifurcation, then to the hila
    bif = np.array([6.0, y_tr + 2.0, zc - 12.0])
    art_segs = [(np.array([hx - 5.0, hy - 0.4 * ry, hz + 0.55 * rz]), bif, 13.0, 12.0)]
    vein_segs: list[tuple] = []
    aw_segs: list[tuple] = []
    la = np.array([hx - 15.0, hy + 0.75 * ry, hz + 0.15 * rz])
    carina = np.array([0.0, y_tr, zc])
    aw_segs.append((np.array([0.0, y_tr - 4.0, body.length + 10.0]), carina, 8.5, 8.5))
    for side in (1, -1):
        hil_a = np.array([side * (0.3 * ca), y_tr + 8.0, zc - 22.0])
        hil_v = np.array([side * (0.28 * ca), y_tr + 18.0, zc - 60.0])
        hil_b = np.array([side * (0.22 * ca), y_tr + 6.0, zc - 16.0])
        art_segs.append((bif, hil_a, 10.0, 9.0))
        vein_segs.append((la, hil_v, 8.0, 7.5))
        aw_segs.append((carina, hil_b, 6.5, 5.5))
        n_v = int(2400 * detail)
        art_segs += grow_tree(hil_a, lung_points(rng, body, side, n_v), 8.0, r_min=0.45)
        vein_segs += grow_tree(hil_v, lung_points(rng, body, side, int(0.8 * n_v)), 7.0,
                               r_min=0.45)
        aw_segs += grow_tree(hil_b, lung_points(rng, body, side, int(400 * detail)), 5.0,
                             r_min=0.9)
    out.append(Tubes.from_lists(art_segs, artery_hu, Tissue.VESSEL, "artery"))
    out.append(Tubes.from_lists(vein_segs, vein_hu, Tissue.VESSEL, "vein"))
    lumen = Tubes.from_lists(aw_segs, -1000.0, Tissue.AIRWAY, "airway")
    out.append(lumen.scaled(1.25, 0.35, tissue_hu(Tissue.AIRWAY_WALL, False), Tissue.AIRWAY_WALL,
                            "airway-wall"))
    out.append(lumen)

    # aorta: ascending, arch, descending beside the spine
    root = np.array([hx - 20.0, hy + 0.1 * ry, hz + 0.6 * rz])
    asc_top = np.array([-10.0, y_tr - 30.0, zc + 18.0])
    arch_top = np.array([8.0, y_tr - 5.0, zc + 34.0])
    desc_top = np.array([24.0, body.spine_y - body.vertebra_r - 14.0, zc + 16.0])
    desc_bot = np.array([18.0, body.spine_y - body.vertebra_r - 10.0, -20.0])
    aorta = [(root, asc_top, 15.0, 14.0), (asc_top, arch_top, 14.0, 13.0),
             (arch_top, desc_top, 13.0, 12.0), (desc_top, desc_bot, 12.0, 11.0)]
    out.append(Tubes.from_lists(aorta, blood, Tissue.BLOOD, "aorta"))

    # ribs: 12 pairs, from the spine round the cavity to the sternum, sloping down anteriorly
    bone, marrow = tissue_hu(Tissue.BONE, False), tissue_hu(Tissue.MARROW, False)
    rib_outer, rib_inner, cart = [], [], []
    spacing = 0.085 * body.lung_height
    for k in range(12):
        z_k = body.z_apex + 8.0 - k * spacing
        phi_end = 2.75 if k < 7 else 2.75 - 0.3 * (k - 6)
        drop = 35.0 + 3.0 * k
        phis = np.linspace(0.18, phi_end, 16)
        for side in (1, -1):
            pts = np.stack([side * (ca + 7.0) * np.sin(phis), (cb + 7.0) * np.cos(phis),
                            z_k - drop * (1 - np.cos(phis)) / 2.0], axis=1)
            for i in range(len(phis) - 1):
                seg = (pts[i], pts[i + 1], 5.0, 5.0)
                (cart if phis[i] > 2.35 else rib_outer).append(seg)
                if phis[i] <= 2.35:
                    rib_inner.append((pts[i], pts[i + 1], 3.0, 3.0))
    out.append(Tubes.from_lists(rib_outer, bone, Tissue.BONE, "rib"))
    out.append(Tubes.from_lists(rib_inner, marrow, Tissue.MARROW, "rib-marrow"))
    out.append(Tubes.from_lists(cart, tissue_hu(Tissue.CARTILAGE, False), Tissue.CARTILAGE,
                                "costal-cartilage"))
    return out
