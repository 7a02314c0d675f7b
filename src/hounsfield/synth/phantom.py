"""One synthetic patient's chest: anatomy, tubes, nodules — and rendering it on any grid.

A :class:`Phantom` is independent of the scanner: the same phantom is rendered on a CT grid
(then degraded by a site's scanner model, :mod:`hounsfield.synth.scanner`) and on a coarse
grid for a radiograph projection (:mod:`hounsfield.synth.dx`), so both share one truth.

Rendering works slab by slab (a few slices at a time, cache-sized), then draws tubes and
nodules inside their own bounding boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hounsfield.synth.anatomy import (
    Body, Tissue, dynamic_labels, label_hu, lung_hu, sample_body, static_labels,
)
from hounsfield.synth.grid import Grid
from hounsfield.synth.nodules import Nodule, sample_nodules
from hounsfield.synth.nodules import render as render_nodules
from hounsfield.synth.trees import Tubes, build_tubes, paint

SLAB = 8
_TEX_STEP = 7.0          # mm between texture lattice points
_TEX_LO = np.array([-280.0, -240.0, -160.0])


@dataclass
class Phantom:
    body: Body
    tubes: list[Tubes]
    nodules: list[Nodule]
    texture: np.ndarray              # coarse smooth field (z, y, x), std about 0.5
    offset: np.ndarray               # patient mm = phantom mm + offset

    def to_patient(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, float) + self.offset


def make_phantom(seed: int | np.random.SeedSequence, *, contrast: bool,
                 nodules: int | None = None, detail: float = 1.0) -> Phantom:
    """Sample one patient from ``seed``: same seed and options -> the same phantom."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    r_body, r_tubes, r_nod, r_tex, r_pos = (np.random.default_rng(s) for s in ss.spawn(5))
    body = sample_body(r_body, contrast=contrast)
    tubes = build_tubes(r_tubes, body, detail=detail)
    nods = sample_nodules(r_nod, body, tubes, nodules)
    n = np.ceil((np.array([560.0, 520.0, body.length + 320.0]) / _TEX_STEP)).astype(int) + 2
    tex = ndimage.gaussian_filter(r_tex.standard_normal((n[2], n[1], n[0])).astype(np.float32), 1.0)
    tex *= np.float32(0.5 / (tex.std() or 1.0))
    # table position: patient z of the scan's lower end; small lateral centring error
    offset = np.array([r_pos.uniform(-12, 12), r_pos.uniform(-10, 10), -r_pos.uniform(150, 420)])
    return Phantom(body, tubes, nods, tex, np.round(offset, 1))


def _lin(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.clip(coords, 0, n - 1.001)
    i0 = np.floor(f).astype(int)
    return i0, (f - i0).astype(np.float32)


def render(ph: Phantom, grid: Grid, *, with_nodules: bool = True,
           labels: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """True HU (float32), tissue labels (uint8 or None) and nodule instance mask (uint8).

    ``grid`` is in patient coordinates.  Arrays are ``[z, y, x]``.
    """
    nz, ny, nx = grid.shape
    xs, ys, zs = grid.axes()
    px, py, pz = xs - ph.offset[0], ys - ph.offset[1], zs - ph.offset[2]
    # separable linear interpolation of the texture lattice: x and y once, z per slab
    tz, ty, tx = ph.texture.shape
    ix, fx = _lin((px - _TEX_LO[0]) / _TEX_STEP, tx)
    iy, fy = _lin((py - _TEX_LO[1]) / _TEX_STEP, ty)
    iz, fz = _lin((pz - _TEX_LO[2]) / _TEX_STEP, tz)
    zlo, zhi = int(iz.min()), int(iz.max()) + 2
    vol = np.empty((nz, ny, nx), np.float32)
    lab = np.empty((nz, ny, nx), np.uint8)
    # the z-independent cross-section once; the z-dependent organs only inside its bounding box
    cross = static_labels(ph.body, px[None, :], py[:, None])
    inner = np.isin(cross, [Tissue.MEDIASTINUM, Tissue.STERNUM_PLATE, Tissue.STERNUM_CORE,
                            Tissue.BONE, Tissue.MARROW])
    rows, cols = np.flatnonzero(inner.any(axis=1)), np.flatnonzero(inner.any(axis=0))
    r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
    c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
    cross_hu = label_hu(ph.body, cross, py[:, None])
    # lung texture: separable linear interpolation of the lattice, x and y once, z per slab
    t = ph.texture[zlo:zhi][:, :, ix[c0:c1]] * (1 - fx[c0:c1]) \
        + ph.texture[zlo:zhi][:, :, ix[c0:c1] + 1] * fx[c0:c1]
    t = t[:, iy[r0:r1], :] * (1 - fy[r0:r1])[None, :, None] \
        + t[:, iy[r0:r1] + 1, :] * fy[r0:r1][None, :, None]
    xb, yb = px[None, None, c0:c1], py[None, r0:r1, None]
    for k0 in range(0, nz, SLAB):
        k1 = min(k0 + SLAB, nz)
        sl, sv = lab[k0:k1], vol[k0:k1]
        sl[...] = cross
        sv[...] = cross_hu
        if r1 <= r0 or c1 <= c0:
            continue
        j = iz[k0:k1] - zlo
        w = fz[k0:k1][:, None, None]
        tex = t[j] * (1 - w) + t[j + 1] * w
        sub = sl[:, r0:r1, c0:c1]
        dynamic_labels(ph.body, sub, xb, yb, pz[k0:k1, None, None])
        hu = label_hu(ph.body, sub, yb)
        np.copyto(hu, lung_hu(ph.body, yb, tex), where=sub == Tissue.LUNG)
        sv[:, r0:r1, c0:c1] = hu
    for tubes in ph.tubes:
        paint(vol, lab, grid, tubes, ph.offset)
    if not labels:
        lab = None
    mask = np.zeros((nz, ny, nx), np.uint8)
    if with_nodules:
        render_nodules(vol, mask, grid, ph.nodules, ph.offset, lab)
    return vol, lab, mask
