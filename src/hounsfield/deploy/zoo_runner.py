"""Inference with a MONAI model-zoo RetinaNet bundle (e.g. ``lung_nodule_ct_detection``), with
the same :class:`~hounsfield.deploy.inference.InferenceResult` and provenance as Hounsfield's own
detectors, so ``hounsfield infer`` and ``hounsfield evaluate`` score it on the archive's CTs.

The bundle's pipeline, step by step as its ``inference.json`` states it: orientation
(``Orientationd``, RAS), resampling (``Spacingd`` pixdim), HU window (``ScaleIntensityRanged``),
MONAI's ``RetinaNetDetector`` with its sliding-window inferer and box selector, boxes clipped to
the image, box centres to patient mm (LPS, as LUNA16 and DICOM), box extent to a diameter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hounsfield.deploy.inference import Finding, InferenceResult, Precision, autocast
from hounsfield.models.volume import PreprocessPlan, Volume, to_patient
from hounsfield.models.zoo import (ZooRetinaNetConfig, build_retinanet, load_weights,
                                   load_zoo_config, reorient)


@dataclass
class ZooRetinaNetRunner:
    """A loaded zoo RetinaNet bundle: MONAI detector + the bundle's preprocessing + provenance."""

    detector: Any  # monai.apps.detection.networks.retinanet_detector.RetinaNetDetector
    config: ZooRetinaNetConfig
    model_name: str = ""
    model_version: str = ""

    @property
    def plan(self) -> PreprocessPlan:
        """Resampling + HU window as the bundle's Spacingd / ScaleIntensityRanged (to [0, 1];
        ``b_min`` / ``b_max`` are applied after)."""
        return PreprocessPlan(spacing_mm=self.config.pixdim, hu_min=self.config.a_min,
                              hu_max=self.config.a_max)

    def _prepare(self, vol: Volume, preprocessed: bool) -> Volume:
        if not preprocessed:  # as the bundle: orientation first, then spacing and window
            return self.plan.apply(reorient(vol, self.config.axcodes))
        out = reorient(vol, self.config.axcodes)
        if not np.allclose(out.spacing, self.config.pixdim, rtol=1e-3):
            # the cache resampled in the acquisition's axes; these differ after reorientation
            out = self.plan.imaging_plan().resample(out)
        return out

    def run_volume(self, vol: Volume, *, precision: Precision = "fp32",
                   preprocessed: bool = False) -> InferenceResult:
        """Findings for one volume (``preprocessed``: already resampled and windowed by
        :attr:`plan`, as the evaluation's cache holds volumes)."""
        t0 = time.perf_counter()
        prep = self._prepare(vol, preprocessed)
        img = torch.from_numpy(np.ascontiguousarray(prep.array.transpose(2, 1, 0)))[None]
        c = self.config
        if (c.b_min, c.b_max) != (0.0, 1.0):
            img = img * (c.b_max - c.b_min) + c.b_min
        t1 = time.perf_counter()
        self.detector.eval()
        with torch.no_grad(), autocast(precision, torch.device("cpu")):
            out = self.detector([img.float()], use_inferer=True)[0]
        t2 = time.perf_counter()
        boxes = out[self.detector.target_box_key].float().numpy().reshape(-1, 6)
        scores = out[self.detector.pred_score_key].float().numpy().reshape(-1)
        hi = np.array(img.shape[1:], dtype=np.float64)
        boxes = np.concatenate([np.clip(boxes[:, :3], 0, hi), np.clip(boxes[:, 3:], 0, hi)], 1)
        ok = np.all(boxes[:, 3:] > boxes[:, :3], axis=1)  # ClipBoxToImaged(remove_empty=True)
        boxes, scores = boxes[ok], scores[ok]
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
        findings: list[Finding] = []
        if len(boxes):
            centre_ijk = (boxes[:, :3] + boxes[:, 3:]) / 2.0
            mm = to_patient(prep, centre_ijk[:, ::-1])
            diam = ((boxes[:, 3:] - boxes[:, :3]) * np.asarray(prep.spacing)).mean(axis=1)
            findings = [Finding(float(p[0]), float(p[1]), float(p[2]), float(d), float(s))
                        for p, d, s in zip(mm, diam, scores)]
        return InferenceResult(vol.series_instance_uid, findings, {
            "model": self.model_name, "model_version": self.model_version,
            "series_instance_uid": vol.series_instance_uid, "plan": self.plan.model_dump(),
            "detector": f"monai-zoo RetinaNet ({c.backbone} FPN)", "precision": precision,
            "roi": list(c.roi_size), "overlap": c.overlap, "axcodes": c.axcodes,
            "preprocess_s": round(t1 - t0, 3), "network_s": round(t2 - t1, 3),
            "input_shape": list(vol.array.shape), "network_shape": list(img.shape[1:]),
        })


def load_zoo_runner(root: Path | str, *, name: str = "", version: str = "") -> ZooRetinaNetRunner:
    """Read a zoo RetinaNet bundle's config (as data), build its detector, load its weights."""
    from hounsfield.errors import InvalidInput

    cfg = load_zoo_config(root)
    if not cfg.clip:
        raise InvalidInput("inference.json ScaleIntensityRanged clip=false: Hounsfield runs "
                           "windowed (clipped) intensity scaling only")
    det = build_retinanet(cfg)
    load_weights(det, root)
    return ZooRetinaNetRunner(det, cfg, model_name=name, model_version=version)
