"""A torchvision-free 3D nodule detector: a U-Net predicting a centre heatmap and a size map.

CenterNet-style (Zhou et al. 2019, "Objects as Points") on a MONAI U-Net, the segmentation-based
family of Retina U-Net / nnDetection: channel 0 is the logit of a Gaussian "nodule centre here"
heatmap, channel 1 the log of the nodule diameter in mm.  Decoding takes local maxima of the
heatmap (3x3x3 max-pool non-maximum suppression), their score as the probability and
``exp(size)`` as the diameter.  No anchors, no torchvision, one dense output: fast on a CPU.

Networks are chosen from the explicit :data:`NETWORKS` registry by name (no dynamic import).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hounsfield.errors import InvalidInput


class NetworkSpec(BaseModel):
    """Which network and its width (saved with the model bundle)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "basic_unet"
    features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    #: patch_cnn: the head also reads the features at the patch's centre (see PatchClassifier)
    centre: bool = False

    @model_validator(mode="after")
    def _centre_is_a_patch_classifier_option(self) -> NetworkSpec:
        if self.centre and self.name != "patch_cnn":
            raise ValueError(f"network.centre is an option of patch_cnn, not of {self.name}")
        return self


def _basic_unet(spec: NetworkSpec) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    # instance norm: per-sample statistics, so DDP ranks compute what one process would;
    # eps 1e-3 bounds the gradient gain on near-constant inputs (air)
    return BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=spec.features,
                     norm=("instance", {"affine": True, "eps": 1e-3}), dropout=spec.dropout)


class PatchClassifier(torch.nn.Module):
    """Stage 2 of the two-stage detector: a small 3D CNN scoring a candidate-centred patch.

    Four conv blocks (3x3x3 conv, instance norm, LeakyReLU; max-pool between blocks) widths
    ``features[0:4]`` — one conv in the full-resolution block, two in the others (the first
    block dominates the cost of scoring a thousand candidates per scan) — global average + max
    pooling, a ``features[4]``-wide hidden layer and one
    logit: "this candidate is a nodule".  Instance norm keeps DDP ranks equal to one process.

    Global pooling cannot tell *where* in the patch a nodule is: a candidate on a vessel a few
    millimetres beside a nodule sees the same nodule as one on the nodule's centre and is scored
    alike.  With ``spec.centre`` the head also reads the central voxels (the middle one or two
    along each axis) of the second, third and fourth blocks' features — the few millimetres
    around the candidate at three scales.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        widths = spec.features[:4]
        layers: list[torch.nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            if i:
                layers.append(torch.nn.MaxPool3d(2, ceil_mode=True))
            for k in range(2 if i else 1):
                layers += [torch.nn.Conv3d(cin if k == 0 else w, w, 3, padding=1),
                           torch.nn.InstanceNorm3d(w, affine=True, eps=1e-3),
                           torch.nn.LeakyReLU(0.1)]
            cin = w
        self.features = torch.nn.Sequential(*layers)
        self.centre = spec.centre
        n_in = 2 * cin + (sum(widths[1:]) if spec.centre else 0)
        self.head = torch.nn.Sequential(torch.nn.Linear(n_in, spec.features[4]),
                                        torch.nn.LeakyReLU(0.1), torch.nn.Dropout(spec.dropout),
                                        torch.nn.Linear(spec.features[4], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.centre:
            f = self.features(x)
            return self.head(torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))], 1))[:, 0]
        centres = []
        f, block = x, 1
        for layer in self.features:
            if isinstance(layer, torch.nn.MaxPool3d):  # the end of a block
                if block > 1:
                    centres.append(_centre(f))
                block += 1
            f = layer(f)
        centres.append(_centre(f))  # the last block's
        return self.head(torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4)), *centres],
                                   1))[:, 0]


def _centre(f: torch.Tensor) -> torch.Tensor:
    """Mean of the central voxel (odd size) or two (even size) along each spatial axis."""
    d, h, w = f.shape[2:]
    return f[:, :, (d - 1) // 2:d // 2 + 1, (h - 1) // 2:h // 2 + 1,
             (w - 1) // 2:w // 2 + 1].mean(dim=(2, 3, 4))


def _patch_cnn(spec: NetworkSpec) -> torch.nn.Module:
    return PatchClassifier(spec)


NETWORKS: dict[str, Callable[[NetworkSpec], torch.nn.Module]] = {"basic_unet": _basic_unet,
                                                                  "patch_cnn": _patch_cnn}


def build_network(spec: NetworkSpec) -> torch.nn.Module:
    if spec.name not in NETWORKS:
        raise InvalidInput(f"unknown network {spec.name!r}; known: {', '.join(sorted(NETWORKS))}")
    net = NETWORKS[spec.name](spec)
    if isinstance(net, PatchClassifier):
        with torch.no_grad():  # start near the candidates' prior (most are not nodules)
            net.head[-1].bias.fill_(-2.0)
        return net
    with torch.no_grad():  # start the heatmap near the nodule prior (focal-loss init)
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        if last.bias is not None:
            last.bias[0] = -4.0
            last.bias[1] = float(np.log(8.0))
    return net


# -- training targets ---------------------------------------------------------------------------

def heatmap_targets(shape: tuple[int, int, int], centres_zyx: np.ndarray, diameters_vox: np.ndarray,
                    diameters_mm: np.ndarray, min_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray]:
    """Gaussian centre heatmap (peak 1), log-diameter map and its mask, for one patch.

    ``diameters_vox`` is (n, 3) per axis (anisotropic voxels): sigma = diameter / 6 per axis,
    at least ``min_sigma`` voxel, so the peak covers the nodule's core.
    """
    heat = np.zeros(shape, dtype=np.float32)
    size = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.float32)
    grids = np.indices(shape, dtype=np.float32)
    for c, dv, dmm in zip(centres_zyx, diameters_vox, diameters_mm):
        sig = np.maximum(np.asarray(dv, dtype=np.float32) / 6.0, min_sigma)
        lo = np.maximum(np.floor(c - 3 * sig), 0).astype(int)
        hi = np.minimum(np.ceil(c + 3 * sig) + 1, shape).astype(int)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.exp(-sum(((grids[k][sl] - c[k]) ** 2) / (2 * sig[k] ** 2) for k in range(3)))
        heat[sl] = np.maximum(heat[sl], g)
        core = g > 0.5
        size[sl][core] = np.log(dmm)
        mask[sl][core] = 1.0
        ci = tuple(int(round(v)) for v in c)
        if all(0 <= ci[k] < shape[k] for k in range(3)):
            heat[ci] = 1.0
    return heat, size, mask


def detection_loss(out: torch.Tensor, heat: torch.Tensor, size: torch.Tensor, mask: torch.Tensor,
                   size_weight: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Penalty-reduced focal loss on the heatmap (CenterNet eq. 1) + masked L1 on log-diameter.

    Both terms are normalised per sample and averaged over the batch, so the mean of per-rank
    losses under DDP equals the loss of one process on the whole batch.
    """
    logit = out[:, 0].float()
    p = torch.sigmoid(logit).clamp(1e-6, 1 - 1e-6)
    pos = (heat >= 0.99).float()
    neg_w = (1 - heat) ** 4
    dims = (1, 2, 3)
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum(dims)
    neg_loss = -(torch.log(1 - p) * p ** 2 * neg_w * (1 - pos)).sum(dims)
    focal = (pos_loss + neg_loss) / pos.sum(dims).clamp(min=1)
    l1 = (torch.abs(out[:, 1].float() - size) * mask).sum(dims) / mask.sum(dims).clamp(min=1)
    focal, l1 = focal.mean(), l1.mean()
    return focal + size_weight * l1, {"focal": focal.detach(), "size_l1": l1.detach()}


# -- decoding -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VoxelDetection:
    """A decoded detection in (preprocessed) voxel space."""

    zyx: tuple[float, float, float]
    probability: float
    diameter_mm: float


def decode(out: torch.Tensor, *, threshold: float = 0.05, top_k: int = 50,
           nms_kernel: int = 3) -> list[VoxelDetection]:
    """Heatmap peaks -> detections for one volume (``out``: 2 x Z x Y x X network output).

    Peaks are local maxima in a ``nms_kernel`` neighbourhood with probability >= ``threshold``;
    centres are refined to the heatmap-weighted centroid of the 3x3x3 neighbourhood.
    """
    prob = torch.sigmoid(out[0].float())
    pooled = F.max_pool3d(prob[None, None], nms_kernel, stride=1, padding=nms_kernel // 2)[0, 0]
    peaks = (prob == pooled) & (prob >= threshold)
    idx = torch.nonzero(peaks)
    if idx.numel() == 0:
        return []
    scores = prob[peaks]
    order = torch.argsort(scores, descending=True)[:top_k]
    idx, scores = idx[order], scores[order]
    pad = F.pad(prob[None, None], (1, 1, 1, 1, 1, 1))[0, 0]
    offs = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing="ij"), -1).reshape(-1, 3)
    res = []
    for (z, y, x), s in zip(idx.tolist(), scores.tolist()):
        w = pad[z:z + 3, y:y + 3, x:x + 3].reshape(-1)
        c = (offs.float() * w[:, None]).sum(0) / w.sum()
        res.append(VoxelDetection((z + float(c[0]), y + float(c[1]), x + float(c[2])), float(s),
                                  float(torch.exp(out[1, z, y, x].float()).clamp(1, 80))))
    return res
