"""Numeric precision of a network's forward pass: fp32, bf16 autocast, or AMP."""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

from hounsfield.errors import InvalidInput

Precision = Literal["fp32", "bf16", "amp"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`, else :class:`InvalidInput`."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    return precision  # type: ignore[return-value]


def autocast(precision: Precision, device: torch.device):  # noqa: ANN201 - a context manager
    """The autocast context for a precision (bf16 on CPU, fp16 AMP on CUDA)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type != "cuda":  # amp
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)
