"""The heatmap detector: plan -> sliding window (centre logit + log diameter) -> peak decoding ->
findings in patient mm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hounsfield.infer.result import Finding, findings_at
from hounsfield.infer.runner import Run, Runner
from hounsfield.infer.window import sliding_window
from hounsfield.models.detector import decode
from hounsfield.models.volume import PreprocessPlan, Volume


@dataclass
class HeatmapRunner(Runner):
    """A loaded heatmap detector: network + plan + window/decoding settings."""

    kind = "heatmap"
    label = "a heatmap detector"

    net: torch.nn.Module
    plan: PreprocessPlan
    roi: tuple[int, int, int]
    threshold: float = 0.05
    top_k: int = 50
    overlap: float = 0.25
    batch_size: int = 4
    model_name: str = ""
    model_version: str = ""

    @property
    def network(self) -> torch.nn.Module:
        return self.net

    def settings(self) -> dict[str, Any]:
        return {"roi": list(self.roi), "overlap": self.overlap}

    def infer(self, prep: Volume, run: Run) -> torch.Tensor:
        return sliding_window(self.net, torch.from_numpy(prep.array)[None], self.roi,
                              overlap=self.overlap, batch_size=self.batch_size,
                              precision=run.options.precision)

    def postprocess(self, prep: Volume, raw: torch.Tensor, run: Run) -> list[Finding]:
        dets = decode(raw, threshold=self.threshold, top_k=self.top_k)
        return findings_at(prep, np.array([d.zyx for d in dets]),
                           [d.diameter_mm for d in dets], [d.probability for d in dets])
