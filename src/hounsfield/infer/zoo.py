"""Inference with a MONAI model-zoo RetinaNet bundle (e.g. ``lung_nodule_ct_detection``), run
through the same :class:`~hounsfield.infer.runner.Runner` template as Hounsfield's own
detectors, so ``hounsfield infer`` and ``hounsfield evaluate`` score it on the archive's CTs.

The bundle's pipeline, step by step as its ``inference.json`` states it: orientation
(``Orientationd``, RAS), resampling (``Spacingd`` pixdim), HU window (``ScaleIntensityRanged``),
MONAI's ``RetinaNetDetector`` with its sliding-window inferer and box selector, boxes clipped to
the image, box centres to patient mm (LPS, as LUNA16 and DICOM), box extent to a diameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hounsfield.errors import InvalidInput
from hounsfield.infer.precision import autocast
from hounsfield.infer.result import Finding, findings_at
from hounsfield.infer.runner import Run, Runner
from hounsfield.models.volume import PreprocessPlan, Volume
from hounsfield.models.zoo import (ZooRetinaNetConfig, build_retinanet, load_weights,
                                   load_zoo_config, reorient)


@dataclass
class ZooRetinaNetRunner(Runner):
    """A loaded zoo RetinaNet bundle: MONAI detector + the bundle's preprocessing."""

    label = "a MONAI zoo RetinaNet"

    detector: Any  # monai.apps.detection.networks.retinanet_detector.RetinaNetDetector
    config: ZooRetinaNetConfig
    model_name: str = ""
    model_version: str = ""

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"monai-zoo RetinaNet ({self.config.backbone} FPN)"

    @property
    def network(self) -> torch.nn.Module:
        return self.detector  # the RetinaNetDetector module: network, anchors, eval() switch

    @property
    def plan(self) -> PreprocessPlan:  # type: ignore[override]
        """Resampling + HU window as the bundle's Spacingd / ScaleIntensityRanged (to [0, 1];
        ``b_min`` / ``b_max`` are applied after)."""
        return PreprocessPlan(spacing_mm=self.config.pixdim, hu_min=self.config.a_min,
                              hu_max=self.config.a_max)

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {"roi": list(c.roi_size), "overlap": c.overlap, "axcodes": c.axcodes}

    def preprocess(self, vol: Volume, *, preprocessed: bool) -> Volume:
        """As the bundle: orientation first, then spacing and window (``preprocessed``: already
        resampled and windowed by :attr:`plan`, as the evaluation's cache holds volumes)."""
        if not preprocessed:
            return self.plan.apply(reorient(vol, self.config.axcodes))
        out = reorient(vol, self.config.axcodes)
        if not np.allclose(out.spacing, self.config.pixdim, rtol=1e-3):
            # the cache resampled in the acquisition's axes; these differ after reorientation
            out = self.plan.imaging_plan().resample(out)
        return out

    def network_shape(self, prep: Volume) -> list[int]:
        return list(prep.array.shape[::-1])  # MONAI's (i, j, k) order

    def infer(self, prep: Volume, run: Run) -> dict[str, np.ndarray]:
        """MONAI's detector (its sliding window and box selector) on the volume, i, j, k."""
        img = torch.from_numpy(np.ascontiguousarray(prep.array.transpose(2, 1, 0)))[None]
        c = self.config
        if (c.b_min, c.b_max) != (0.0, 1.0):
            img = img * (c.b_max - c.b_min) + c.b_min
        with torch.no_grad(), autocast(run.options.precision, run.device):
            out = self.detector([img.float().to(run.device)], use_inferer=True)[0]
        return {"boxes": out[self.detector.target_box_key].float().cpu().numpy().reshape(-1, 6),
                "scores": out[self.detector.pred_score_key].float().cpu().numpy().reshape(-1),
                "shape": np.array(img.shape[1:], dtype=np.float64)}

    def postprocess(self, prep: Volume, raw: dict[str, np.ndarray], run: Run) -> list[Finding]:
        """Boxes clipped to the image (empty ones dropped, as ``ClipBoxToImaged``), by score;
        box centres to patient mm, box extent to a diameter."""
        boxes, scores, hi = raw["boxes"], raw["scores"], raw["shape"]
        boxes = np.concatenate([np.clip(boxes[:, :3], 0, hi), np.clip(boxes[:, 3:], 0, hi)], 1)
        ok = np.all(boxes[:, 3:] > boxes[:, :3], axis=1)  # ClipBoxToImaged(remove_empty=True)
        boxes, scores = boxes[ok], scores[ok]
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
        centre_ijk = (boxes[:, :3] + boxes[:, 3:]) / 2.0
        diam = ((boxes[:, 3:] - boxes[:, :3]) * np.asarray(prep.spacing)).mean(axis=1)
        return findings_at(prep, centre_ijk[:, ::-1], diam, scores)


def load_zoo_runner(root: Path | str, *, name: str = "", version: str = "") -> ZooRetinaNetRunner:
    """Read a zoo RetinaNet bundle's config (as data), build its detector, load its weights."""
    cfg = load_zoo_config(root)
    if not cfg.clip:
        raise InvalidInput("inference.json ScaleIntensityRanged clip=false: Hounsfield runs "
                           "windowed (clipped) intensity scaling only")
    det = build_retinanet(cfg)
    load_weights(det, root)
    return ZooRetinaNetRunner(det, cfg, model_name=name, model_version=version)
