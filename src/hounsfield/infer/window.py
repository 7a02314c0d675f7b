"""The sliding-window inferer: a network over a whole volume in overlapping, batched windows."""

from __future__ import annotations

import itertools

import torch

from hounsfield.errors import InvalidInput
from hounsfield.infer.precision import Precision, autocast


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
    # it once per value, which skips the network on much of a CT's field of view.  (On constant
    # input an InstanceNorm network amplifies float rounding noise layer by layer, so no
    # implementation's output there is more than noise; computing it once makes it the same
    # noise everywhere instead of batch-dependent noise.)
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
