"""Nodule inference: series -> preprocessed volume -> sliding window -> findings in patient mm.

The fixed inference template (MONAI Label style): pre-transform (the model's
:class:`PreprocessPlan`) -> inferer (:func:`sliding_window`, batched windows, fp32 / bf16 / AMP)
-> post-transform (heatmap decoding, voxel -> patient mm) -> findings with provenance (model
name and version, input series, plan).  The clinical pipeline calls :func:`infer_series`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from hounsfield.errors import InvalidInput
from hounsfield.models.detector import decode
from hounsfield.models.volume import PreprocessPlan, Volume, to_patient

Precision = Literal["fp32", "bf16", "amp"]


@dataclass(frozen=True)
class Finding:
    """One nodule candidate: centre in patient mm (x, y, z), diameter, probability."""

    x_mm: float
    y_mm: float
    z_mm: float
    diameter_mm: float
    probability: float


@dataclass
class InferenceResult:
    series_instance_uid: str
    findings: list[Finding]
    provenance: dict[str, Any] = field(default_factory=dict)
    #: two-stage detectors, when asked (evaluation): every stage-1 candidate's centre in patient
    #: mm (N x 3), so a report can tell nodules stage 1 missed from those stage 2 ranked low
    candidates_mm: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"series_instance_uid": self.series_instance_uid,
                "findings": [asdict(f) for f in self.findings], "provenance": self.provenance}


def autocast(precision: Precision, device: torch.device):
    """The autocast context for a precision (bf16 on CPU, fp16 AMP on CUDA)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "amp":
        if device.type != "cuda":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast("cuda", dtype=torch.float16)
    raise InvalidInput(f"unknown precision {precision!r} (fp32, bf16, amp)")


def _starts(size: int, win: int, step: int) -> list[int]:
    if size <= win:
        return [0]
    s = list(range(0, size - win, step))
    return s + [size - win]


def sliding_window(net: torch.nn.Module, image: torch.Tensor, roi: tuple[int, int, int], *,
                   overlap: float = 0.25, batch_size: int = 4, precision: Precision = "fp32",
                   out_channels: int = 2) -> torch.Tensor:
    """Run ``net`` over ``image`` (1 x Z x Y x X) in overlapping windows, batched; average overlaps.

    Windows are ``roi`` voxels (padded with zeros where the image is smaller), placed every
    ``roi * (1 - overlap)`` voxels with the last window flush with the border (as MONAI's
    ``sliding_window_inference`` with constant blending).  Output: C x Z x Y x X float32.
    """
    if not 0 <= overlap < 1:
        raise InvalidInput("overlap must be in [0, 1)")
    dev = next(net.parameters()).device
    shape = image.shape[1:]
    pad = [max(r - s, 0) for r, s in zip(roi, shape)]
    if any(pad):
        image = torch.nn.functional.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))
    full = image.shape[1:]
    steps = [max(1, int(round(r * (1 - overlap)))) for r in roi]
    starts = list(itertools.product(*(_starts(full[k], roi[k], steps[k]) for k in range(3))))
    out = torch.zeros((out_channels, *full), dtype=torch.float32)
    count = torch.zeros((1, *full), dtype=torch.float32)
    # a window whose input is one constant value (air outside the body, padding) gives the same
    # output wherever it lies (the network is translation-equivariant inside a window): compute
    # it once per value; exact, and it skips the network on much of a CT's field of view
    constant: dict[float, torch.Tensor] = {}
    todo = []
    for z, y, x in starts:
        w = image[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]]
        lo, hi = torch.aminmax(w)
        if lo == hi:
            todo.append(((z, y, x), float(lo)))
        else:
            todo.append(((z, y, x), None))
    with torch.inference_mode(), autocast(precision, dev):
        for val in {v for _s, v in todo if v is not None}:
            probe = torch.full((1, 1, *roi), val, dtype=image.dtype, device=dev)
            constant[val] = net(probe).float().cpu()[0]
        work = [s for s, v in todo if v is None]
        for i in range(0, len(work), batch_size):
            chunk = work[i:i + batch_size]
            batch = torch.stack([image[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]]
                                 for z, y, x in chunk]).to(dev)
            pred = net(batch).float().cpu()
            for (z, y, x), p in zip(chunk, pred):
                out[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]] += p
                count[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]] += 1
    for (z, y, x), v in todo:
        if v is not None:
            out[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]] += constant[v]
            count[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]] += 1
    out /= count
    return out[:, :shape[0], :shape[1], :shape[2]]


@dataclass
class DetectorRunner:
    """A loaded detector ready to run: network + plan + window/decoding settings + provenance."""

    net: torch.nn.Module
    plan: PreprocessPlan
    roi: tuple[int, int, int]
    threshold: float = 0.05
    top_k: int = 50
    overlap: float = 0.25
    batch_size: int = 4
    model_name: str = ""
    model_version: str = ""

    def run_volume(self, vol: Volume, *, precision: Precision = "fp32",
                   preprocessed: bool = False) -> InferenceResult:
        t0 = time.perf_counter()
        prep = vol if preprocessed else self.plan.apply(vol)
        t1 = time.perf_counter()
        self.net.eval()
        out = sliding_window(self.net, torch.from_numpy(prep.array)[None], self.roi,
                             overlap=self.overlap, batch_size=self.batch_size, precision=precision)
        t2 = time.perf_counter()
        dets = decode(out, threshold=self.threshold, top_k=self.top_k)
        findings = []
        if dets:
            mm = to_patient(prep, np.array([d.zyx for d in dets]))
            findings = [Finding(float(p[0]), float(p[1]), float(p[2]), d.diameter_mm,
                                d.probability) for p, d in zip(mm, dets)]
        return InferenceResult(vol.series_instance_uid, findings, {
            "model": self.model_name, "model_version": self.model_version,
            "series_instance_uid": vol.series_instance_uid, "plan": self.plan.model_dump(),
            "precision": precision, "roi": list(self.roi), "overlap": self.overlap,
            "preprocess_s": round(t1 - t0, 3), "network_s": round(t2 - t1, 3),
            "input_shape": list(vol.array.shape), "network_shape": list(prep.array.shape),
        })


def infer_series(archive, settings, model_ref: str, series_instance_uid: str, *,
                 precision: Precision = "fp32", tta_top_k: int | None = None) -> InferenceResult:
    """Findings for one archived series from a registered model ``NAME[@VERSION]``;
    ``tta_top_k`` overrides the model's test-time augmentation (two-stage models)."""
    from hounsfield.models.bundle import load_runner
    from hounsfield.models.volume import load_series
    from hounsfield.registry.mlflow_registry import ModelRegistry

    reg = ModelRegistry(settings)
    mv = reg.resolve(model_ref)
    runner = load_runner(reg.bundle_path(mv), name=mv.name, version=mv.version)
    set_tta(runner, tta_top_k)
    return runner.run_volume(load_series(archive, series_instance_uid), precision=precision)


def set_tta(runner, tta_top_k: int | None) -> None:  # noqa: ANN001
    """Override a runner's test-time augmentation (``None`` keeps the model's setting)."""
    from hounsfield.deploy.two_stage import TwoStageRunner
    from hounsfield.errors import InvalidInput

    if tta_top_k is None:
        return
    if tta_top_k < 0:
        raise InvalidInput(f"--tta {tta_top_k}: the number of candidates to re-score, >= 0")
    if not isinstance(runner, TwoStageRunner):
        from hounsfield.deploy.zoo_runner import ZooRetinaNetRunner

        kind = ("a MONAI zoo RetinaNet" if isinstance(runner, ZooRetinaNetRunner)
                else "a heatmap detector")
        raise InvalidInput(f"--tta applies to two-stage models only (this one is {kind})")
    runner.tta_top_k = tta_top_k
