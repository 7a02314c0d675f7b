"""Chest anatomy as functions of position: the analytic part of the phantom.

Coordinates are phantom millimetres in the DICOM patient frame (PS3.3 C.7.6.2.1.1, LPS):
``x`` grows to the patient's left, ``y`` to posterior, ``z`` to the head.  The body axis is
``x = y = 0``; ``z = 0`` is the lower end of the scan range (upper abdomen), ``z = length`` its
upper end (above the lung apices).

:func:`classify` returns the tissue label and the true HU of any set of points given as
broadcastable arrays — a slab of a grid (``z[:, None, None]``, ``y[None, :, None]``,
``x[None, None, :]``) or a point cloud (three 1-D arrays).  Tubular structures (airways,
vessels, aorta, ribs) are not here but in :mod:`hounsfield.synth.trees`, rendered afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue labels of the phantom's label map (uint8)."""

    AIR = 0
    TABLE = 1
    SKIN = 2
    FAT = 3
    MUSCLE = 4
    LUNG = 5
    MEDIASTINUM = 6
    HEART = 7
    BLOOD = 8
    BONE = 9
    MARROW = 10
    AIRWAY = 11
    ABDOMEN = 12
    VESSEL = 13
    AIRWAY_WALL = 14
    NODULE = 15
    CARTILAGE = 16
    STERNUM_PLATE = 17  # internal: sternum cross-section, bone only within its z range
    STERNUM_CORE = 18


# true HU of each tissue without contrast (mean; textures add a few HU)
BASE_HU: dict[Tissue, float] = {
    Tissue.AIR: -1000.0, Tissue.TABLE: 180.0, Tissue.SKIN: 30.0, Tissue.FAT: -100.0,
    Tissue.MUSCLE: 50.0, Tissue.LUNG: -850.0, Tissue.MEDIASTINUM: -85.0, Tissue.HEART: 40.0,
    Tissue.BLOOD: 40.0, Tissue.BONE: 750.0, Tissue.MARROW: 230.0, Tissue.AIRWAY: -1000.0,
    Tissue.ABDOMEN: 55.0, Tissue.VESSEL: 40.0, Tissue.AIRWAY_WALL: -20.0, Tissue.NODULE: 35.0,
    Tissue.CARTILAGE: 110.0,
}
CONTRAST_BLOOD_HU = 300.0


@dataclass(frozen=True)
class Body:
    """One patient's body shape (all mm).  Sampled by :func:`sample_body`."""

    length: float           # scan range along z
    a: float                # body half-width (left-right)
    b: float                # body half-depth (anterior-posterior)
    fat: float              # subcutaneous fat thickness
    muscle: float           # chest-wall muscle thickness
    z_base: float           # lowest lung point (posterior recess)
    z_apex: float           # lung apex
    dome_r: float           # right diaphragm dome height above z_base
    dome_l: float
    heart: tuple[float, float, float, float, float, float, float]  # cx, cy, cz, rx, ry, rz, angle
    spine_y: float          # centre of the vertebral bodies
    vertebra_r: float
    table_gap: float
    contrast: bool

    # derived ----------------------------------------------------------------------------
    @property
    def cavity(self) -> tuple[float, float]:
        """Half-axes of the thoracic cavity (inside ribs and chest-wall muscle)."""
        return (self.a - self.fat - self.muscle - 12.0, self.b - 0.7 * self.fat - self.muscle - 12.0)

    @property
    def lung_height(self) -> float:
        return self.z_apex - self.z_base

    @property
    def z_carina(self) -> float:
        return self.z_apex - 0.38 * self.lung_height

    def lung_ellipse(self, side: int) -> tuple[float, float, float, float]:
        """Centre x, centre y, half-axis x, half-axis y of the lung at full width."""
        ca, cb = self.cavity
        return side * 0.48 * ca, 0.04 * cb, 0.54 * ca, 0.93 * cb

    @property
    def table_y(self) -> float:
        return 0.93 * self.b + self.table_gap


def sample_body(rng: np.random.Generator, *, contrast: bool) -> Body:
    """A plausible adult chest: size, habitus, lung height, heart and dome positions vary."""
    s = rng.uniform(0.88, 1.12)
    habitus = rng.uniform(0.92, 1.12)
    a = 158.0 * s * habitus
    b = 108.0 * s * rng.uniform(0.92, 1.1)
    fat = rng.uniform(6.0, 26.0) * habitus
    muscle = rng.uniform(9.0, 16.0)
    lung_h = 245.0 * s * rng.uniform(0.92, 1.06)
    z_base = 38.0
    z_apex = z_base + lung_h
    length = z_apex + rng.uniform(10.0, 25.0)
    ca = a - fat - muscle - 12.0
    cb = b - 0.7 * fat - muscle - 12.0
    heart = (0.22 * ca * rng.uniform(0.8, 1.2), -0.22 * cb, z_base + 0.25 * lung_h,
             0.42 * ca * rng.uniform(0.9, 1.1), 0.5 * cb, 0.23 * lung_h,
             np.deg2rad(rng.uniform(20.0, 40.0)))
    return Body(length=length, a=a, b=b, fat=fat, muscle=muscle, z_base=z_base, z_apex=z_apex,
                dome_r=rng.uniform(0.2, 0.27) * lung_h, dome_l=rng.uniform(0.13, 0.2) * lung_h,
                heart=tuple(float(v) for v in heart), spine_y=0.62 * cb, vertebra_r=17.0 * s,
                table_gap=rng.uniform(1.0, 4.0), contrast=contrast)


def _profile(body: Body, z: np.ndarray) -> np.ndarray:
    """Relative lung width at height z: 0 at the apex, 1 from 40 % of the height downwards."""
    u = np.clip((body.z_apex - z) / (0.42 * body.lung_height), 0.0, 1.0)
    return np.sqrt(1.0 - (1.0 - u) ** 2)


def lung_side(body: Body, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: int) -> np.ndarray:
    """Boolean: inside the lung of ``side`` (+1 = left, -1 = right), before the mediastinal
    structures (heart, spine, vessels) are cut out."""
    cx, cy, ax, ay = body.lung_ellipse(side)
    g = np.maximum(_profile(body, z), 1e-3)
    u = (x - cx) / ax
    v = (y - cy) / ay
    inside = u * u / (g * g) + v * v / (g * g) < 1.0
    dome = body.dome_l if side > 0 else body.dome_r
    # diaphragm: a dome over the lung's centre, lower posteriorly (costophrenic recesses)
    zd = body.z_base + dome * np.clip(1.0 - u * u - 0.8 * v * v, 0.0, 1.0) - 12.0 * np.clip(v, 0, 1)
    medial = side * x > 14.0 + 6.0 * (y > 0)
    return inside & (z > zd) & medial


def _heart(body: Body, x, y, z) -> np.ndarray:
    cx, cy, cz, rx, ry, rz, ang = body.heart
    c, s = np.cos(ang), np.sin(ang)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    w = (z - cz) / rz
    return u * u + v * v + w * w


def classify(body: Body, x: np.ndarray, y: np.ndarray, z: np.ndarray,
             texture: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Tissue label (uint8) and true HU (float32) at the points (x, y, z), broadcast.

    ``texture`` is a smooth field in about [-1, 1] (same broadcast shape or scalar) that
    modulates lung density; 0 gives the mean values.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z), np.shape(texture))
    lab = np.array(np.broadcast_to(static_labels(body, x, y), shape))
    dynamic_labels(body, lab, x, y, z)
    return lab, label_hu(body, lab, y, texture)


def static_labels(body: Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The labels that do not depend on z (body wall, cavity, spine, table, sternum plate):
    computed once per cross-section, of shape ``broadcast(x, y)``."""
    ca, cb = body.cavity
    x, y = np.broadcast_arrays(x, y)
    lab = np.zeros(x.shape, np.uint8)
    ty = body.table_y - 0.0007 * x * x
    table = ((y > ty) & (y < ty + 7.0) | (y > ty + 45.0) & (y < ty + 53.0)) & (np.abs(x) < 215.0)
    lab[table] = Tissue.TABLE
    yb = 0.93 * body.b
    in_body = ((x / body.a) ** 2 + (y / body.b) ** 2 < 1.0) & (y < yb)
    lab[in_body] = Tissue.SKIN
    lab[((x / (body.a - 2.0)) ** 2 + (y / (body.b - 2.0)) ** 2 < 1.0) & (y < yb - 2.0)] = Tissue.FAT
    lab[(x / (body.a - body.fat)) ** 2 + (y / (body.b - 0.7 * body.fat)) ** 2 < 1.0] = Tissue.MUSCLE
    # posterior mediastinum: the spine and the tissue just in front of it; the lungs wrap
    # round its sides to the rib heads (paravertebral gutters)
    paraspinal = (x / 32.0) ** 2 + ((y - body.spine_y) / (body.vertebra_r + 9.0)) ** 2 < 1.0
    paraspinal |= (np.abs(x) < 26.0) & (y > body.spine_y)
    lab[((x / ca) ** 2 + (y / cb) ** 2 < 1.0) & ~paraspinal] = Tissue.MEDIASTINUM
    ry = y - body.spine_y
    rv = body.vertebra_r
    rv2 = x * x + ry * ry
    cy_canal = rv + 9.0
    rc2 = x * x + (ry - cy_canal) ** 2
    arch = (rc2 < 15.0 ** 2) & (ry > rv - 1.0) | (np.abs(x) < 4.0) & (ry > cy_canal) \
        & (ry < cy_canal + 40.0)
    lab[arch & in_body] = Tissue.BONE
    lab[rc2 < 8.5 ** 2] = Tissue.MUSCLE  # cord and CSF
    lab[rv2 < rv * rv] = Tissue.BONE
    lab[rv2 < (rv - 2.2) ** 2] = Tissue.MARROW
    sy = y + cb + 6.0
    lab[(np.abs(x) < 15.0) & (np.abs(sy) < 6.0)] = Tissue.STERNUM_PLATE
    lab[(np.abs(x) < 12.5) & (np.abs(sy) < 3.5)] = Tissue.STERNUM_CORE
    return lab


def dynamic_labels(body: Body, lab: np.ndarray, x: np.ndarray, y: np.ndarray,
                   z: np.ndarray) -> None:
    """Add the z-dependent organs (lungs, heart, diaphragm, discs, sternum extent) in place."""
    ca, cb = body.cavity
    in_cavity = lab == Tissue.MEDIASTINUM
    below = in_cavity & (z < body.z_base + 0.5 * (body.dome_r + body.dome_l) - 18.0 * (y / cb))
    lab[below] = Tissue.ABDOMEN
    lungs = (lung_side(body, x, y, z, 1) | lung_side(body, x, y, z, -1)) & in_cavity
    lab[lungs] = Tissue.LUNG
    h = _heart(body, x, y, z)
    in_cavity |= lungs
    lab[(h < 1.17) & in_cavity] = Tissue.MEDIASTINUM
    lab[(h < 1.0) & in_cavity] = Tissue.HEART
    lab[(h < 0.55) & in_cavity] = Tissue.BLOOD
    disc = np.broadcast_to(np.mod(z, 27.0) < 5.5, lab.shape)
    lab[disc & ((lab == Tissue.BONE) | (lab == Tissue.MARROW))
        & (x * x + (y - body.spine_y) ** 2 < body.vertebra_r ** 2)] = Tissue.CARTILAGE
    zs = np.broadcast_to((z > body.z_base + 0.05 * body.lung_height)
                         & (z < body.z_apex - 0.12 * body.lung_height), lab.shape)
    plate = lab == Tissue.STERNUM_PLATE
    core = lab == Tissue.STERNUM_CORE
    lab[(plate | core) & ~zs] = Tissue.MUSCLE
    lab[plate & zs] = Tissue.BONE
    lab[core & zs] = Tissue.MARROW


def label_hu(body: Body, lab: np.ndarray, y: np.ndarray,
             texture: np.ndarray | float = 0.0) -> np.ndarray:
    """True HU of a label map; ``texture`` modulates lung density (with a gravity gradient:
    dependent, posterior lung is denser)."""
    hu = np.take(_HU_LUT[int(body.contrast)], lab)
    np.copyto(hu, np.broadcast_to(lung_hu(body, y, texture), hu.shape), where=lab == Tissue.LUNG)
    return hu


def lung_hu(body: Body, y: np.ndarray, texture: np.ndarray | float) -> np.ndarray:
    cb = body.cavity[1]
    grav = np.float32(45.0 / cb) * np.clip(y, -cb, cb).astype(np.float32)
    return np.float32(-865.0) + grav + np.float32(28.0) * np.asarray(texture, np.float32)


def _lut(contrast: bool) -> np.ndarray:
    lut = np.full(256, -1000.0, np.float32)
    for t, v in BASE_HU.items():
        lut[int(t)] = v
    if contrast:
        lut[int(Tissue.BLOOD)] = CONTRAST_BLOOD_HU
        lut[int(Tissue.HEART)] = 120.0  # enhancing myocardium
    return lut


_HU_LUT = (_lut(False), _lut(True))


def tissue_hu(tissue: Tissue, contrast: bool) -> float:
    return float(_HU_LUT[int(contrast)][int(tissue)])
