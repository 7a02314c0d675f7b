"""Where a model runs: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (the first GPU when there is
one), and where the two-stage detector's blob filter runs."""

from __future__ import annotations

import torch

from hounsfield.errors import InvalidInput

DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(choice: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's choice: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    ``auto`` is ``cuda`` when PyTorch sees a GPU, else ``cpu``.  Asking for CUDA where there is
    none (a CPU-only PyTorch build, no driver, an index beyond the GPUs) is an
    :class:`~hounsfield.errors.InvalidInput` that says so, not a failure deep inside a model.
    """
    if isinstance(choice, torch.device):
        choice = str(choice)
    text = str(choice).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise InvalidInput(f"--device {choice!r}: expected cpu, cuda, cuda:N or auto") from None
        if not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                   else "PyTorch sees no GPU (driver or CUDA_VISIBLE_DEVICES)")
            raise InvalidInput(f"--device {choice}: CUDA is not available here ({why}); "
                               "use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InvalidInput(f"--device {choice}: there are {count} GPU(s) (cuda:0"
                               f"{f'..cuda:{count - 1}' if count > 1 else ''})")
        return dev
    raise InvalidInput(f"--device {choice!r}: expected cpu, cuda, cuda:N or auto")


def candidate_device(device: torch.device | str | None = None) -> str | None:
    """Where the two-stage detector's blob filter runs: torch on a CUDA device (``device``, else
    the first GPU when there is one), scipy (``None``) on CPUs, where it is the faster."""
    if device is not None:
        return str(device) if torch.device(device).type == "cuda" else None
    return "cuda" if torch.cuda.is_available() else None
