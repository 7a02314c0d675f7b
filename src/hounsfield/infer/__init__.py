"""Inference: the :class:`Runner` template (pre-process -> infer -> post-process, timed, with
provenance), the runners (heatmap detector, two-stage detector, MONAI zoo RetinaNet), one
loader for any registered model (warm per process), the sliding-window inferer, precision and
device choice.

Layer: above ``registry`` and ``models``; ``evaluate``, ``results``, ``train`` and ``deploy``
build on it.  Code outside this package duck-types findings (``x_mm``, ``y_mm``, ``z_mm``,
``diameter_mm``, ``probability``) rather than importing :class:`Finding`.
"""

from hounsfield.infer.device import DEVICE_CHOICES, candidate_device, resolve_device
from hounsfield.infer.heatmap import HeatmapRunner
from hounsfield.infer.loader import WARM, infer_series, load_model, load_runner
from hounsfield.infer.precision import PRECISIONS, Precision, autocast, check_precision
from hounsfield.infer.result import Finding, InferenceResult
from hounsfield.infer.runner import Run, RunOptions, Runner
from hounsfield.infer.two_stage import TwoStageRunner
from hounsfield.infer.window import sliding_window
from hounsfield.infer.zoo import ZooRetinaNetRunner, load_zoo_runner

__all__ = [
    "DEVICE_CHOICES", "PRECISIONS", "WARM", "Finding", "HeatmapRunner", "InferenceResult",
    "Precision", "Run", "RunOptions", "Runner", "TwoStageRunner", "ZooRetinaNetRunner",
    "autocast", "candidate_device", "check_precision", "infer_series", "load_model",
    "load_runner", "load_zoo_runner", "resolve_device", "sliding_window",
]
