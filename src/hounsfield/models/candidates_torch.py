"""Stage-1 blob candidates with torch (a GPU): the same filter as :mod:`hounsfield.models.candidates`.

At full resolution (0.7 x 0.7 x 1.25 mm, ~450 x 450 x 220 voxels) scipy's blob filter takes
~220 s per CT on one CPU core, which made the ``gpu`` preset's data preparation, not its
network, the bottleneck.  This module computes the identical quantities with torch on any
device: Gaussian smoothing as three 1-D convolutions with scipy's kernel (truncate 4) and its
``reflect`` border, the Hessian by the same central differences, the largest eigenvalue (closed
form) where the Hessian is negative definite, local maxima with 1-D max-pools over scipy's
``nearest`` border, and the strongest ``per_scale`` peaks in the same order (ties by voxel
index).  On a CPU scipy is faster (~2x); the pipelines use this only on a GPU.  Results equal the
scipy path's up to float rounding (a test compares them on the CPU).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hounsfield.models.blobs import CandidateSpec, hessian, scale_parameters

ScalePeaks = Callable[[np.ndarray, float, int, np.ndarray, np.ndarray, CandidateSpec],
                      tuple[np.ndarray, np.ndarray]]


def scale_peaks_on(device: str | torch.device, img: np.ndarray, mask: np.ndarray) -> ScalePeaks:
    """A drop-in for ``candidates._scale_peaks`` that runs on ``device``; the mask is uploaded
    once, each (clipped) image once."""
    dev = torch.device(device)
    mask_t = torch.from_numpy(np.ascontiguousarray(mask)).to(dev)
    last: dict[str, object] = {}

    def run(im: np.ndarray, d: float, per_scale: int, sp_zyx: np.ndarray, _mask: np.ndarray,
            spec: CandidateSpec) -> tuple[np.ndarray, np.ndarray]:
        if last.get("src") is not im:
            last["src"] = im
            last["t"] = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).to(dev)
        with torch.inference_mode():
            return scale_peaks(last["t"], d, per_scale, sp_zyx, mask_t, spec)  # type: ignore[arg-type]

    return run


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of an axis of length ``n`` padded by ``pad`` on each side, scipy's ``reflect``
    (d c b a | a b c d | d c b a), repeated as often as ``pad`` needs."""
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian(img: torch.Tensor, sigma_vox) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(img, sigma_vox)`` (truncate 4, mode ``reflect``)."""
    out = img
    for axis, sd in enumerate(float(s) for s in sigma_vox):
        if sd <= 1e-15:
            continue
        radius = int(4.0 * sd + 0.5)
        x = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 / (sd * sd) * x ** 2)
        k = torch.tensor(k / k.sum(), dtype=torch.float32, device=img.device)
        idx = _reflect_index(out.shape[axis], radius, img.device)
        padded = out.index_select(axis, idx)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        # full fp32 (no TF32 on a GPU): the responses are compared and ranked like scipy's
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                        allow_tf32=False):
            out = F.conv3d(padded[None, None], k.view(shape))[0, 0]
    return out


def dot_response(img: torch.Tensor, sigma_vox, sp_zyx, mask: torch.Tensor) -> torch.Tensor:
    """``candidates.dot_response`` on a torch tensor."""
    (dzz, dyy, dxx, dzy, dzx, dyx), negdef = hessian(gaussian(img, sigma_vox), sp_zyx)
    negdef &= mask[1:-1, 1:-1, 1:-1]
    where = negdef.nonzero(as_tuple=True)
    inner = torch.zeros_like(dzz)
    if len(where[0]):
        inner[where] = -largest_eigenvalue(*(t[where] for t in (dzz, dyy, dxx, dzy, dzx, dyx)))
    out = torch.zeros_like(img)
    out[1:-1, 1:-1, 1:-1] = inner
    out[~mask] = float("-inf")
    return out


def largest_eigenvalue(a00: torch.Tensor, a11: torch.Tensor, a22: torch.Tensor, a01: torch.Tensor,
                       a02: torch.Tensor, a12: torch.Tensor) -> torch.Tensor:
    """The largest eigenvalue of symmetric 3x3 matrices, closed form (Smith 1961: the
    trigonometric solution of the characteristic cubic), in float64 — batched ``eigvalsh`` on
    millions of 3x3 matrices is slow on a GPU; this is a few elementwise kernels."""
    a00, a11, a22, a01, a02, a12 = (t.double() for t in (a00, a11, a22, a01, a02, a12))
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    q = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = torch.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2 * p1) / 6)
    safe = torch.where(p > 0, p, torch.ones_like(p))
    b00, b11, b22, b01, b02, b12 = (t / safe for t in (b00, b11, b22, a01, a02, a12))
    det = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = torch.acos(torch.clamp(det / 2, -1.0, 1.0)) / 3
    return torch.where(p > 0, q + 2 * p * torch.cos(phi), q).float()


def scale_peaks(img: torch.Tensor, d: float, per_scale: int, sp_zyx, mask: torch.Tensor,
                spec: CandidateSpec) -> tuple[np.ndarray, np.ndarray]:
    """``candidates._scale_peaks`` on torch tensors; returns numpy (voxel zyx, response)."""
    sp = np.asarray(sp_zyx, dtype=np.float32)
    sig_mm, sig, size = scale_parameters(d, sp, spec)
    resp = dot_response(img, sig, sp, mask) * float(np.float32(sig_mm ** 2))
    mx = max_filter(resp, size)
    peaks = (resp == mx) & (resp >= spec.min_response)
    idx = peaks.nonzero()  # row-major, like np.argwhere
    r = resp[peaks]
    order = torch.sort(-r, stable=True).indices[:per_scale]
    return (idx[order].double().cpu().numpy(), r[order].double().cpu().numpy())


def max_filter(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``scipy.ndimage.maximum_filter(x, size, mode="nearest")`` for odd sizes: edge-replicated
    border, one 1-D max-pool per axis (a box maximum is separable, as scipy computes it)."""
    out = x[None, None]
    for axis, k in enumerate(size):
        if k <= 1:
            continue
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = k // 2
        kernel = [1, 1, 1]
        kernel[axis] = k
        out = F.max_pool3d(F.pad(out, pad, mode="replicate"), kernel_size=kernel, stride=1)
    return out[0, 0]
