"""One factory for every model Hounsfield runs, and a warm cache so a worker loads each once.

:func:`load_runner` reads a MONAI-layout bundle — Hounsfield's own (heatmap or two-stage
detector: ``configs/hounsfield.json``) or a MONAI model-zoo RetinaNet — and returns its
:class:`~hounsfield.infer.runner.Runner` on a device.  :func:`load_model` resolves a registered
``NAME[@VERSION|@ALIAS]`` through the registry and keeps the runner warm, keyed by (name,
version, device): the second job for a model in a worker process reuses the loaded network.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from hounsfield.infer.device import resolve_device
from hounsfield.infer.heatmap import HeatmapRunner
from hounsfield.infer.precision import Precision
from hounsfield.infer.result import InferenceResult
from hounsfield.infer.runner import Runner, RunOptions
from hounsfield.infer.two_stage import TwoStageRunner
from hounsfield.infer.zoo import load_zoo_runner
from hounsfield.models.bundle import load_network, read_bundle_info
from hounsfield.models.candidates import CandidateSpec
from hounsfield.models.volume import PreprocessPlan


def load_runner(path: Path | str, *, name: str = "", version: str = "",
                device: str | torch.device = "cpu") -> Runner:
    """The runner of a bundle on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``):
    Hounsfield's heatmap or two-stage detector, or a MONAI model-zoo RetinaNet bundle."""
    dev = resolve_device(device)
    if read_bundle_info(path)["hounsfield"] is None:  # a MONAI model-zoo bundle
        return load_zoo_runner(path, name=name, version=version).to(dev)
    net, hf = load_network(path)
    inf = hf["inference"]
    plan = PreprocessPlan.model_validate(hf["plan"])
    runner: Runner
    if hf.get("detector", "heatmap") == "two-stage":
        runner = TwoStageRunner(net, plan, CandidateSpec.model_validate(hf["candidates"]),
                                tuple(hf["patch"]), threshold=inf["threshold"],
                                top_k=inf["top_k"], batch_size=inf["batch_size"],
                                tta_top_k=int(inf.get("tta_top_k", 0)),
                                model_name=name, model_version=version)
    else:
        runner = HeatmapRunner(net, plan, tuple(inf["roi"]), threshold=inf["threshold"],
                               top_k=inf["top_k"], overlap=inf["overlap"],
                               batch_size=inf["batch_size"], model_name=name,
                               model_version=version)
    return runner.to(dev)


class WarmModels:
    """Loaded runners of one process, keyed by (name, version, device).

    Registered versions are immutable (a retrain is a new version), so a cached runner never
    goes stale; :meth:`clear` drops them all (tests, or a worker told to free memory).
    """

    def __init__(self) -> None:
        self._runners: dict[tuple[str, str, str], Runner] = {}
        self._lock = threading.Lock()

    def get(self, settings, ref: str, device: str | torch.device = "auto") -> Runner:  # noqa: ANN001
        from hounsfield.registry.mlflow_registry import ModelRegistry

        dev = resolve_device(device)
        reg = ModelRegistry(settings)
        mv = reg.resolve(ref)
        key = (mv.name, str(mv.version), str(dev))
        with self._lock:  # one load per key even when two jobs ask at once
            runner = self._runners.get(key)
            if runner is None:
                runner = load_runner(reg.bundle_path(mv), name=mv.name, version=mv.version,
                                     device=dev)
                self._runners[key] = runner
        return runner

    def loaded(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return sorted(self._runners)

    def clear(self) -> None:
        with self._lock:
            self._runners.clear()


#: this process's warm models (a worker keeps each model it ran loaded)
WARM = WarmModels()


def load_model(settings, ref: str, device: str | torch.device = "auto") -> Runner:  # noqa: ANN001
    """The runner of a registered model ``NAME[@VERSION|@ALIAS]`` on ``device``, loaded once
    per process (:data:`WARM`)."""
    return WARM.get(settings, ref, device)


def infer_series(archive, settings, ref: str, series_uid: str, *,  # noqa: ANN001
                 device: str | torch.device = "auto", precision: Precision = "fp32",
                 tta_top_k: int | None = None) -> InferenceResult:
    """Findings for one archived series from a registered model; ``tta_top_k`` overrides the
    model's test-time augmentation (two-stage models) for this call only."""
    from hounsfield.imaging.series import load_series

    runner = load_model(settings, ref, device)
    runner.check(RunOptions(precision, tta_top_k))  # refuse a bad option before reading
    return runner.run_volume(load_series(archive, series_uid), precision=precision,
                             tta_top_k=tta_top_k)
