"""The two-stage detector: plan -> blob candidates (stage 1) -> batched patch classifier
(stage 2, optional flip test-time augmentation) -> non-maximum suppression -> findings in
patient mm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hounsfield.infer.device import candidate_device
from hounsfield.infer.precision import autocast
from hounsfield.infer.result import Finding, findings_at
from hounsfield.infer.runner import Run, Runner
from hounsfield.models.candidates import Candidates, CandidateSpec
from hounsfield.models.two_stage import cached_candidates, classify, select_detections, spec_key
from hounsfield.models.volume import PreprocessPlan, Volume, to_patient


@dataclass
class TwoStageRunner(Runner):
    """A loaded two-stage detector: candidate settings + classifier + plan."""

    kind = "two-stage"
    label = "a two-stage detector"
    supports_tta = True

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

    @property
    def network(self) -> torch.nn.Module:
        return self.net

    def settings(self) -> dict[str, Any]:
        return {"patch": list(self.patch)}

    def infer(self, prep: Volume, run: Run) -> tuple[Candidates, np.ndarray]:
        """Stage-1 candidates (cached under ``cache_dir`` by ``cache_key`` when both are given;
        timed as ``candidates_s``) and their stage-2 probabilities."""
        o = run.options
        tta = self.tta_top_k if o.tta_top_k is None else o.tta_top_k
        f = (o.cache_dir / f"cand-{spec_key(self.candidates)}" / f"{o.cache_key}.npz"
             if o.cache_dir is not None and o.cache_key else None)
        with run.timed("candidates_s"):
            cands = cached_candidates(prep.array, prep.spacing, self.candidates,
                                      hu_min=self.plan.hu_min, hu_max=self.plan.hu_max,
                                      cache_file=f, device=candidate_device(run.device))
        run.provenance.update(tta_top_k=tta, candidates=len(cands))
        probs = np.zeros(0)
        if len(cands):
            with autocast(o.precision, run.device):
                probs = classify(self.net, prep.array, cands.zyx, self.patch,
                                 batch_size=self.batch_size)
                if tta:
                    top = np.argsort(-probs, kind="stable")[:tta]
                    probs[top] = classify(self.net, prep.array, cands.zyx[top], self.patch,
                                          batch_size=self.batch_size, flips=True)
        return cands, probs

    def postprocess(self, prep: Volume, raw: tuple[Candidates, np.ndarray],
                    run: Run) -> list[Finding]:
        cands, probs = raw
        if run.options.keep_candidates:
            run.candidates_mm = to_patient(prep, cands.zyx) if len(cands) else np.zeros((0, 3))
        if not len(cands):
            return []
        keep = select_detections(cands.zyx, cands.diameter_mm, probs,
                                 np.asarray(prep.spacing[::-1]), threshold=self.threshold,
                                 top_k=self.top_k)
        return findings_at(prep, cands.zyx[keep], cands.diameter_mm[keep], probs[keep])
