"""Synthetic series for the imaging and de-identification tests (written with our own writer,
then optionally bent: tilt, missing slices, compression, shuffled file order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hounsfield.imaging.volume import Volume
from hounsfield.imaging.writer import SeriesInfo, to_part10, volume_to_datasets


def rotation(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def phantom(shape=(12, 20, 24), spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, -30.0),
            direction=None, seed: int = 0) -> Volume:
    """A CT-like volume: air, a body ellipse of soft tissue, a bright 'nodule', noise."""
    k, j, i = np.indices(shape)
    rng = np.random.default_rng(seed)
    body = ((i - shape[2] / 2) / (shape[2] * 0.4)) ** 2 + ((j - shape[1] / 2) / (shape[1] * 0.4)) ** 2 < 1
    a = np.where(body, 40, -1000).astype(np.int16)
    a[(abs(k - shape[0] // 2) < 2) & (abs(j - shape[1] // 2) < 2) & (abs(i - shape[2] // 3) < 2)] = 300
    a = (a + rng.integers(-20, 20, size=shape)).astype(np.int16)
    return Volume(a, spacing, origin, direction if direction is not None else np.eye(3))


def write_series(folder: Path, vol: Volume, *, modality: str = "CT", patient: str = "SYN^ONE",
                 seed: str = "syn", transfer_syntax=None, shuffle: bool = True,
                 mutate=None, **info) -> list[Path]:
    """Write ``vol`` as single-frame files; ``mutate(k, ds)`` may bend instance ``k``."""
    folder.mkdir(parents=True, exist_ok=True)
    dss = volume_to_datasets(vol, SeriesInfo(patient_name=patient, patient_id=patient.split("^")[0],
                                             modality=modality, uid_seed=seed, **info))
    paths = []
    order = np.random.default_rng(1).permutation(len(dss)) if shuffle else range(len(dss))
    for n, k in enumerate(order):
        ds = dss[k]
        ds.InstanceNumber = n + 1  # deliberately unrelated to position
        if mutate is not None and mutate(int(k), ds) is False:
            continue
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        p = folder / f"img{n:04d}.dcm"
        p.write_bytes(to_part10(ds))
        paths.append(p)
    return paths
