"""Inference with the two-stage detector: plan -> blob candidates -> batched patch classifier ->
non-maximum suppression -> findings in patient mm, with the same :class:`InferenceResult` and
provenance as the heatmap detector's :class:`~hounsfield.deploy.inference.DetectorRunner`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hounsfield.deploy.inference import Finding, InferenceResult, Precision
from hounsfield.models.candidates import CandidateSpec
from hounsfield.models.two_stage import (cached_candidates, candidate_device, classify,
                                         merge_detections, spec_key)
from hounsfield.models.volume import PreprocessPlan, Volume, to_patient


@dataclass
class TwoStageRunner:
    """A loaded two-stage detector: candidate settings + classifier + plan + provenance."""

    net: torch.nn.Module
    plan: PreprocessPlan
    candidates: CandidateSpec
    patch: tuple[int, int, int]
    threshold: float = 0.05
    top_k: int = 50
    batch_size: int = 64
    model_name: str = ""
    model_version: str = ""
    tta_top_k: int = 0  # re-score the k most probable candidates over 8 flips (0 = off)

    def run_volume(self, vol: Volume, *, precision: Precision = "fp32",
                   preprocessed: bool = False, cache_dir: Path | None = None,
                   cache_key: str = "", keep_candidates: bool = False) -> InferenceResult:
        """Findings for one volume; stage-1 candidates are cached under ``cache_dir`` by
        ``cache_key`` (the preprocessed volume's content key) when both are given, and
        returned in patient mm (``candidates_mm``) with ``keep_candidates``."""
        t0 = time.perf_counter()
        prep = vol if preprocessed else self.plan.apply(vol)
        t1 = time.perf_counter()
        f = (cache_dir / f"cand-{spec_key(self.candidates)}" / f"{cache_key}.npz"
             if cache_dir is not None and cache_key else None)
        cands = cached_candidates(prep.array, prep.spacing, self.candidates,
                                  hu_min=self.plan.hu_min, hu_max=self.plan.hu_max, cache_file=f,
                                  device=candidate_device(next(self.net.parameters()).device))
        t2 = time.perf_counter()
        self.net.eval()
        findings: list[Finding] = []
        if len(cands):
            probs = classify(self.net, prep.array, cands.zyx, self.patch,
                             batch_size=self.batch_size, precision=precision)
            if self.tta_top_k:
                top = np.argsort(-probs, kind="stable")[:self.tta_top_k]
                probs[top] = classify(self.net, prep.array, cands.zyx[top], self.patch,
                                      batch_size=self.batch_size, precision=precision,
                                      flips=True)
            keep = merge_detections(cands.zyx, cands.diameter_mm, probs,
                                    np.asarray(prep.spacing[::-1]))
            keep = keep[probs[keep] >= self.threshold][:self.top_k]
            if len(keep):
                mm = to_patient(prep, cands.zyx[keep])
                findings = [Finding(float(p[0]), float(p[1]), float(p[2]),
                                    float(cands.diameter_mm[k]), float(probs[k]))
                            for p, k in zip(mm, keep)]
        t3 = time.perf_counter()
        provenance = {
            "model": self.model_name, "model_version": self.model_version,
            "series_instance_uid": vol.series_instance_uid, "plan": self.plan.model_dump(),
            "detector": "two-stage", "precision": precision, "patch": list(self.patch),
            "tta_top_k": self.tta_top_k,
            "candidates": len(cands), "preprocess_s": round(t1 - t0, 3),
            "candidates_s": round(t2 - t1, 3), "network_s": round(t3 - t2, 3),
            "input_shape": list(vol.array.shape), "network_shape": list(prep.array.shape),
        }
        every = None
        if keep_candidates:
            every = to_patient(prep, cands.zyx) if len(cands) else np.zeros((0, 3))
        return InferenceResult(vol.series_instance_uid, findings, provenance,
                               candidates_mm=every)
