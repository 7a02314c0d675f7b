"""Training data: dataset split -> preprocessed volumes (cached) -> seeded, nodule-biased patches.

Every patch is a pure function of (seed, epoch, index), so runs are reproducible and a DDP run
over N processes sees exactly the patches one process would (each rank takes every N-th index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hounsfield.models.detector import heatmap_targets
from hounsfield.models.volume import (PreprocessPlan, Volume, preprocessed_volume, to_voxel,
                                      volume_key)


@dataclass
class PreparedVolume:
    """A preprocessed volume and its nodules in its voxel space."""

    volume: Volume
    centres_zyx: np.ndarray  # (n, 3)
    diameters_mm: np.ndarray  # (n,)
    site: str = ""
    cache_key: str = ""  # content hash + plan: names derived caches (stage-1 candidates)

    @property
    def diameters_vox(self) -> np.ndarray:
        sp_zyx = np.asarray(self.volume.spacing[::-1])
        return self.diameters_mm[:, None] / sp_zyx[None, :]


def prepare_split(archive, ds, split: str, plan: PreprocessPlan, cache_dir: Path | None,
                  *, limit: int = 0, on_item=None) -> list[PreparedVolume]:
    """Load and preprocess the series of a dataset split (cached by content hash and plan)."""
    rows = ds.series(split)
    if limit:
        rows = rows[:limit]
    out = []
    for r in rows:
        vol = preprocessed_volume(archive, r, plan, cache_dir)
        key = volume_key(r, plan)
        nods = ds.nodules([r["series_instance_uid"]])
        if nods:
            zyx = to_voxel(vol, np.array([(n.x, n.y, n.z) for n in nods]))
            dm = np.array([n.diameter_mm for n in nods], dtype=np.float32)
        else:
            zyx, dm = np.zeros((0, 3)), np.zeros(0, dtype=np.float32)
        out.append(PreparedVolume(vol, zyx, dm, r["site"], key))
        if on_item:
            on_item(r)
    return out


class PatchDataset(Dataset):
    """``patches_per_volume`` random patches per volume; a share centred near a nodule."""

    def __init__(self, volumes: list[PreparedVolume], patch: tuple[int, int, int], *,
                 patches_per_volume: int, positive_fraction: float, seed: int) -> None:
        self.volumes = volumes
        self.patch = np.asarray(patch)
        self.ppv = patches_per_volume
        self.pos_frac = positive_fraction
        self.seed = seed
        self.epoch = 0
        # centres for the random patches: voxels inside the body (not air).  An all-air patch
        # is constant, and instance norm on a constant input multiplies gradients by
        # 1/sqrt(eps) per layer: it teaches nothing and can overflow the backward pass
        self.body = []
        for pv in volumes:
            sub = np.argwhere(pv.volume.array[::2, ::4, ::4] > 0.1) * np.array([2, 4, 4])
            self.body.append(sub if len(sub) else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.volumes) * self.ppv

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        pv = self.volumes[i % len(self.volumes)]
        arr = pv.volume.array
        shape = np.asarray(arr.shape)
        if len(pv.centres_zyx) and rng.random() < self.pos_frac:
            c = pv.centres_zyx[rng.integers(len(pv.centres_zyx))]
            jitter = rng.uniform(-0.35, 0.35, 3) * self.patch
            start = np.round(c + jitter - self.patch / 2).astype(int)
        elif self.body[i % len(self.volumes)] is not None:
            body = self.body[i % len(self.volumes)]
            start = np.round(body[rng.integers(len(body))] - self.patch / 2).astype(int)
        else:
            start = np.array([rng.integers(0, max(s - p, 0) + 1) for s, p in zip(shape, self.patch)])
        start = np.clip(start, 0, np.maximum(shape - self.patch, 0))
        img = np.zeros(tuple(self.patch), dtype=np.float32)
        sl = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
        crop = arr[sl]
        img[tuple(slice(0, s) for s in crop.shape)] = crop
        heat, size, mask = heatmap_targets(tuple(int(v) for v in self.patch),
                                           pv.centres_zyx - start, pv.diameters_vox,
                                           pv.diameters_mm)
        if rng.random() < 0.5:  # left-right flip: lungs are roughly mirror images
            img, heat, size, mask = (np.ascontiguousarray(a[..., ::-1]) for a in (img, heat, size, mask))
        return {"image": torch.from_numpy(img)[None], "heat": torch.from_numpy(heat),
                "size": torch.from_numpy(size), "mask": torch.from_numpy(mask)}
