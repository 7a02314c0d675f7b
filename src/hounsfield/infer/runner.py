"""The inference template every model runs through (MONAI Label's ``BasicInferTask`` shape):

    pre-process  (the model's plan: resample, HU window; skipped for cached volumes)
    -> infer     (the network: sliding window, candidates + classifier, MONAI's detector)
    -> post-process (decode to findings in patient mm)

:meth:`Runner.run_volume` is the one template: it times the three stages and builds the
provenance (model, version, series, plan, precision, device, shapes, seconds) once, so runners
implement only their stages.  A stage adds what only it knows (e.g. the number of stage-1
candidates, a sub-stage's seconds) through the :class:`Run` it is handed.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from hounsfield.errors import InvalidInput
from hounsfield.infer.device import resolve_device
from hounsfield.infer.precision import Precision, check_precision
from hounsfield.infer.result import Finding, InferenceResult
from hounsfield.models.volume import PreprocessPlan, Volume


@dataclass(frozen=True)
class RunOptions:
    """How to run one volume (the same for every runner; a runner uses what applies to it)."""

    precision: Precision = "fp32"
    #: re-score the k most probable candidates over 8 flips; None keeps the model's setting
    #: (two-stage models only: others refuse a value)
    tta_top_k: int | None = None
    #: stage-1 candidate cache: a folder and the preprocessed volume's content key
    cache_dir: Path | None = None
    cache_key: str = ""
    #: return every stage-1 candidate (``InferenceResult.candidates_mm``) where there are any
    keep_candidates: bool = False


@dataclass
class Run:
    """One call of the template: its options, its device, and what the stages add."""

    options: RunOptions
    device: torch.device
    provenance: dict[str, Any] = field(default_factory=dict)
    candidates_mm: Any = None

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Seconds of a sub-stage, recorded as ``provenance[key]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.provenance[key] = round(time.perf_counter() - t0, 3)


class Runner(ABC):
    """A loaded model ready to run on volumes.

    Subclasses are dataclasses with ``model_name``, ``model_version`` and a ``plan``; they give
    :attr:`network` (what :meth:`to` moves), :meth:`infer` and :meth:`postprocess`, and may
    override :meth:`preprocess`, :meth:`settings` and :meth:`network_shape`.
    """

    #: provenance ``detector``: what kind of model this is
    kind: ClassVar[str]
    #: the kind in a sentence ("this one is a heatmap detector")
    label: ClassVar[str]
    #: whether :attr:`RunOptions.tta_top_k` applies
    supports_tta: ClassVar[bool] = False

    model_name: str
    model_version: str
    plan: PreprocessPlan

    @property
    @abstractmethod
    def network(self) -> torch.nn.Module:
        """The module whose parameters decide the device (moved by :meth:`to`)."""

    @property
    def device(self) -> torch.device:
        p = next(self.network.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "Runner":
        """Move the model to ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``); returns self."""
        self.network.to(resolve_device(device))
        return self

    # -- the stages ------------------------------------------------------------------------------

    def preprocess(self, vol: Volume, *, preprocessed: bool) -> Volume:
        """The network's input volume: :attr:`plan` applied (``preprocessed``: it was)."""
        return vol if preprocessed else self.plan.apply(vol)

    @abstractmethod
    def infer(self, prep: Volume, run: Run) -> Any:
        """The network's raw output for the preprocessed volume."""

    @abstractmethod
    def postprocess(self, prep: Volume, raw: Any, run: Run) -> list[Finding]:
        """Findings in patient mm from the raw output."""

    def settings(self) -> dict[str, Any]:
        """The runner's own settings for the provenance (window, patch, ...)."""
        return {}

    def network_shape(self, prep: Volume) -> list[int]:
        """The shape of the network's input, as recorded in the provenance."""
        return list(prep.array.shape)

    # -- the template ----------------------------------------------------------------------------

    def check(self, options: RunOptions) -> None:
        """Refuse options that do not apply to this model."""
        check_precision(options.precision)
        if options.tta_top_k is not None:
            if options.tta_top_k < 0:
                raise InvalidInput(f"--tta {options.tta_top_k}: the number of candidates to "
                                   "re-score, >= 0")
            if not self.supports_tta:
                raise InvalidInput(f"--tta applies to two-stage models only (this one is "
                                   f"{self.label})")

    def run_volume(self, vol: Volume, *, precision: Precision = "fp32",
                   preprocessed: bool = False, tta_top_k: int | None = None,
                   cache_dir: Path | None = None, cache_key: str = "",
                   keep_candidates: bool = False) -> InferenceResult:
        """Findings for one volume: pre-process -> infer -> post-process, timed, with provenance.

        ``preprocessed``: ``vol`` is already the plan's output (the evaluation's cache). The
        other keywords are :class:`RunOptions`.
        """
        options = RunOptions(precision, tta_top_k, cache_dir, cache_key, keep_candidates)
        self.check(options)
        run = Run(options, self.device)
        t0 = time.perf_counter()
        prep = self.preprocess(vol, preprocessed=preprocessed)
        t1 = time.perf_counter()
        self.network.eval()
        raw = self.infer(prep, run)
        t2 = time.perf_counter()
        findings = self.postprocess(prep, raw, run)
        t3 = time.perf_counter()
        provenance = {
            "model": self.model_name, "model_version": self.model_version,
            "series_instance_uid": vol.series_instance_uid, "plan": self.plan.model_dump(),
            "detector": self.kind, "precision": precision, "device": str(run.device),
            **self.settings(), **run.provenance,
            "input_shape": list(vol.array.shape), "network_shape": self.network_shape(prep),
            "preprocess_s": round(t1 - t0, 3), "network_s": round(t2 - t1, 3),
            "postprocess_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3),
        }
        return InferenceResult(vol.series_instance_uid, findings, provenance,
                               candidates_mm=run.candidates_mm)
