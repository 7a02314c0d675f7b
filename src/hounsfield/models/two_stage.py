"""The two-stage nodule detector's shared pieces: candidate patches and their classification.

Stage 1 (:mod:`hounsfield.models.candidates`) proposes blobs; stage 2 cuts a fixed-size patch
around each candidate from the preprocessed volume and the :class:`PatchClassifier` scores it.
Training (:mod:`hounsfield.train.two_stage`), validation, evaluation and inference all use
:func:`extract_patches` and :func:`classify`, so they see candidates exactly alike.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from hounsfield.models.candidates import (Candidates, CandidateSpec, find_candidates,
                                          merge_passes, refine_centres)


def extract_patch(array: np.ndarray, centre_zyx, patch: tuple[int, int, int]) -> np.ndarray:
    """The ``patch``-sized block centred on ``centre_zyx`` (rounded), zero outside the volume."""
    p = np.asarray(patch)
    c = np.round(np.asarray(centre_zyx, dtype=np.float64)).astype(int)
    lo = c - p // 2
    hi = lo + p
    out = np.zeros(tuple(p), dtype=np.float32)
    slo = np.maximum(lo, 0)
    shi = np.minimum(hi, array.shape)
    if np.any(shi <= slo):
        return out
    dst = tuple(slice(a - b, c2 - b) for a, c2, b in zip(slo, shi, lo))
    out[dst] = array[tuple(slice(a, b) for a, b in zip(slo, shi))]
    return out


def extract_patches(array: np.ndarray, centres_zyx: np.ndarray,
                    patch: tuple[int, int, int]) -> np.ndarray:
    """Patches for many centres: (n, 1, *patch) float32."""
    out = np.zeros((len(centres_zyx), 1, *patch), dtype=np.float32)
    for i, c in enumerate(centres_zyx):
        out[i, 0] = extract_patch(array, c, patch)
    return out


def classify(net: torch.nn.Module, array: np.ndarray, centres_zyx: np.ndarray,
             patch: tuple[int, int, int], *, batch_size: int = 64,
             flips: bool = False) -> np.ndarray:
    """Nodule probability of every candidate (batched patches through the classifier);
    ``flips``: the mean over the 8 mirror images of each patch (flips along z, y and x, as in
    training) — test-time augmentation.  Reduced precision: call it inside
    :func:`hounsfield.infer.autocast`."""
    dev = next(net.parameters()).device
    dims = [tuple(a for a, bit in zip((2, 3, 4), (m & 1, m & 2, m & 4)) if bit)
            for m in range(8 if flips else 1)]
    probs = np.zeros(len(centres_zyx), dtype=np.float64)
    with torch.inference_mode():
        for i in range(0, len(centres_zyx), batch_size):
            x = torch.from_numpy(extract_patches(array, centres_zyx[i:i + batch_size], patch)).to(dev)
            probs[i:i + batch_size] = np.mean(
                [torch.sigmoid(net(x.flip(d) if d else x).float()).cpu().numpy() for d in dims],
                axis=0)
    return probs


def spec_key(spec: CandidateSpec) -> str:
    """The candidate cache's key of ``spec`` (without the faint pass when there is none, so
    caches made before it existed stay valid)."""
    ex = {"faint_clip_hu", "faint_per_scale"} if spec.faint_clip_hu is None else set()
    return hashlib.sha256(spec.model_dump_json(exclude=ex).encode()).hexdigest()[:12]


def base_spec(spec: CandidateSpec) -> CandidateSpec:
    """``spec`` without its faint pass."""
    return spec.model_copy(update={"faint_clip_hu": None, "faint_per_scale": None})


def cached_candidates(array: np.ndarray, spacing_xyz, spec: CandidateSpec, *, hu_min: float,
                      hu_max: float, cache_file: Path | None = None,
                      device: str | None = None) -> Candidates:
    """:func:`find_candidates` (cached in ``cache_file``, npz, when given), then
    :func:`refine_centres`.  With a faint pass, the base pass is cached under its own spec's
    key (shared with models that lack the faint pass) and ``cache_file`` holds the faint
    pass's additions.  ``device``: see :func:`find_candidates`
    (:func:`hounsfield.infer.candidate_device` chooses it)."""
    if spec.faint_clip_hu is None:
        return refine_centres(array, _cached_pass(array, spacing_xyz, spec, ("base",),
                                                  hu_min, hu_max, cache_file, device))
    b = base_spec(spec)
    bf = (cache_file.parent.parent / f"cand-{spec_key(b)}" / cache_file.name
          if cache_file is not None else None)
    first = _cached_pass(array, spacing_xyz, b, ("base",), hu_min, hu_max, bf, device)
    second = _cached_pass(array, spacing_xyz, spec, ("faint",), hu_min, hu_max, cache_file, device)
    return refine_centres(array, merge_passes(first, second))


def _cached_pass(array, spacing_xyz, spec: CandidateSpec, passes: tuple[str, ...],
                 hu_min: float, hu_max: float, cache_file: Path | None,
                 device: str | None = None) -> Candidates:
    if cache_file is not None and cache_file.is_file():
        z = np.load(cache_file)
        return Candidates(z["zyx"], z["diameter_mm"], z["response"])
    c = find_candidates(array, tuple(spacing_xyz), spec, hu_min=hu_min, hu_max=hu_max,
                        passes=passes, device=device)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, zyx=c.zyx, diameter_mm=c.diameter_mm, response=c.response)
        tmp.replace(cache_file)
    return c


def merge_detections(centres_zyx: np.ndarray, diam_mm: np.ndarray, probs: np.ndarray,
                     spacing_zyx: np.ndarray) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression: a candidate within the radius of a
    more probable kept one is the same finding (candidates of several scales on one nodule)."""
    order = np.argsort(-probs, kind="stable")
    kept: list[int] = []
    pts = np.asarray(centres_zyx, dtype=np.float64) * spacing_zyx
    kpts = np.empty((len(order), 3))
    krad = np.empty(len(order))
    for i in order:
        n = len(kept)
        if n and (np.sqrt(((kpts[:n] - pts[i]) ** 2).sum(axis=1)) < krad[:n]).any():
            continue
        kpts[n] = pts[i]
        krad[n] = max(diam_mm[i] / 2, 2.0)
        kept.append(int(i))
    return np.asarray(kept, dtype=int)


def select_detections(centres_zyx: np.ndarray, diam_mm: np.ndarray, probs: np.ndarray,
                      spacing_zyx: np.ndarray, *, threshold: float, top_k: int) -> np.ndarray:
    """Indices of the findings: :func:`merge_detections`, then those at ``threshold`` or above,
    the ``top_k`` most probable (inference and training's validation alike)."""
    keep = merge_detections(centres_zyx, diam_mm, probs, spacing_zyx)
    return keep[probs[keep] >= threshold][:top_k]
