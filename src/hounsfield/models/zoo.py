"""MONAI model-zoo detection bundles (``lung_nodule_ct_detection`` and bundles laid out like it),
read as typed data and run without evaluating the bundle's expressions.

A zoo bundle's ``configs/inference.json`` is a MONAI ``ConfigParser`` program: ``$`` strings are
Python expressions, ``@`` strings references, ``_target_`` dictionaries constructors. Hounsfield
never evaluates them (DESIGN: configuration is data). :func:`read_retinanet_config` instead
*parses* the parts that define the model — the ResNet backbone call, the FPN feature extractor
call, the RetinaNet and anchor-generator constructors, the box selector and sliding-window
settings, the orientation, spacing and intensity window of the preprocessing — with
:mod:`ast`, accepting literals and ``@`` references only, against an allow-list of MONAI
callables. Anything else gets an :class:`~hounsfield.errors.InvalidInput` naming the key.

:func:`build_retinanet` builds the network from MONAI's own classes. MONAI's
``resnet_fpn_feature_extractor`` and ``BackboneWithFPN`` need torchvision only for
``IntermediateLayerGetter`` (and a trainable-layers check that matters for training); the
equivalent :class:`_LayerGetter` below keeps the state-dict keys (``feature_extractor.body.*``),
so a zoo ``model.pt`` loads unchanged and no torchvision is needed to run it.
"""

from __future__ import annotations

import ast
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from hounsfield.errors import InvalidInput

_RESNETS = {f"resnet{n}" for n in (10, 18, 34, 50, 101, 152, 200)}
_REF = re.compile(r"@([A-Za-z_][A-Za-z0-9_#]*)")


class ZooRetinaNetConfig(BaseModel):
    """What a zoo RetinaNet bundle's ``inference.json`` says about its model (typed)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(description="MONAI ResNet factory, e.g. resnet50")
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    returned_layers: list[int] = Field(default_factory=lambda: [1, 2, 3])
    num_classes: int = 1
    num_anchors: int = 3
    size_divisible: list[int] | int = 1
    feature_map_scales: list[int]
    base_anchor_shapes: list[list[float]]
    score_thresh: float = 0.05
    topk_candidates_per_level: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 300
    roi_size: list[int]
    overlap: float = 0.25
    sw_batch_size: int = 1
    mode: str = "constant"
    axcodes: str = "RAS"
    pixdim: tuple[float, float, float]
    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True


# -- parsing the bundle's expressions as data ------------------------------------------------------

class _Ref:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"@{self.name}"


def _call(expr: Any, key: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``"$pkg.mod.fn(lit, @ref, k=lit)"`` -> (``"pkg.mod.fn"``, args, kwargs); literals and
    ``@`` references only."""
    if not isinstance(expr, str) or not expr.startswith("$"):
        raise InvalidInput(f"inference.json {key!r}: expected a '$' call expression, got {expr!r}")
    src = _REF.sub(lambda m: "__ref__" + m.group(1).replace("#", "__hash__"), expr[1:].strip())
    try:
        node = ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise InvalidInput(f"inference.json {key!r}: not a call Hounsfield can read: {exc}") from None
    if not isinstance(node, ast.Call):
        raise InvalidInput(f"inference.json {key!r}: expected a single call, got {expr!r}")

    def value(n: ast.AST) -> Any:
        if isinstance(n, ast.Name) and n.id.startswith("__ref__"):
            return _Ref(n.id[7:].replace("__hash__", "#"))
        try:
            return ast.literal_eval(n)
        except ValueError:
            raise InvalidInput(f"inference.json {key!r}: argument {ast.unparse(n)!r} is neither a "
                               "literal nor an @reference (Hounsfield does not evaluate "
                               "expressions)") from None

    return (ast.unparse(node.func), [value(a) for a in node.args],
            {k.arg: value(k.value) for k in node.keywords if k.arg})


def _resolve(cfg: dict[str, Any], v: Any, key: str) -> Any:
    if isinstance(v, str) and v.startswith("@"):
        v = _Ref(v[1:])
    if isinstance(v, _Ref):
        if v.name not in cfg:
            raise InvalidInput(f"inference.json {key!r}: reference @{v.name} is not defined")
        return _resolve(cfg, cfg[v.name], v.name)
    if isinstance(v, str) and v.startswith("$"):
        raise InvalidInput(f"inference.json {key!r}: {v!r} is an expression; Hounsfield reads "
                           "literal values only here")
    return v


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def _transform(cfg: dict[str, Any], name: str) -> dict[str, Any] | None:
    pre = cfg.get("preprocessing")
    items = pre.get("transforms", []) if isinstance(pre, dict) else []
    for t in items:
        if isinstance(t, dict) and _short(t.get("_target_", "")) == name:
            return t
    return None


def is_retinanet_bundle(cfg: dict[str, Any]) -> bool:
    net = cfg.get("network_def")
    return isinstance(net, dict) and _short(net.get("_target_", "")) == "RetinaNet"


def read_retinanet_config(cfg: dict[str, Any]) -> ZooRetinaNetConfig:
    """The typed model description of a zoo RetinaNet ``inference.json`` (parsed, not run)."""
    if not is_retinanet_bundle(cfg):
        raise InvalidInput("inference.json: network_def is not a MONAI RetinaNet; Hounsfield runs "
                           "zoo detection bundles built on monai.apps.detection's RetinaNet")
    net = cfg["network_def"]
    out: dict[str, Any] = {}
    for k in ("num_classes", "num_anchors", "size_divisible"):
        if k in net:
            out[k] = _resolve(cfg, net[k], f"network_def.{k}")
    if int(_resolve(cfg, net.get("spatial_dims", 3), "network_def.spatial_dims")) != 3:
        raise InvalidInput("inference.json network_def.spatial_dims: only 3D detectors are run")

    fe_key = net.get("feature_extractor")
    if not (isinstance(fe_key, str) and fe_key.startswith("@")):
        raise InvalidInput("inference.json network_def.feature_extractor: expected an @reference")
    fn, args, kw = _call(cfg.get(fe_key[1:]), fe_key[1:])
    if _short(fn) != "resnet_fpn_feature_extractor":
        raise InvalidInput(f"inference.json {fe_key[1:]!r}: {fn} is not "
                           "resnet_fpn_feature_extractor")
    names = ["backbone", "spatial_dims", "pretrained_backbone", "returned_layers",
             "trainable_backbone_layers"]
    fe = dict(zip(names, args)) | kw
    out["returned_layers"] = list(_resolve(cfg, fe.get("returned_layers", [1, 2, 3]),
                                           "returned_layers"))
    bb = fe.get("backbone")
    bb_key = bb.name if isinstance(bb, _Ref) else "backbone"
    fn, args, kw = _call(cfg.get(bb_key), bb_key)
    if _short(fn) not in _RESNETS or args:
        raise InvalidInput(f"inference.json {bb_key!r}: {fn}(...) is not a MONAI ResNet factory "
                           f"called with keywords ({', '.join(sorted(_RESNETS))})")
    out["backbone"] = _short(fn)
    out["backbone_args"] = {k: _resolve(cfg, v, f"{bb_key}.{k}") for k, v in kw.items()}

    ag = cfg.get("anchor_generator")
    if not (isinstance(ag, dict) and _short(ag.get("_target_", "")) ==
            "AnchorGeneratorWithAnchorShape"):
        raise InvalidInput("inference.json anchor_generator: expected "
                           "AnchorGeneratorWithAnchorShape")
    out["feature_map_scales"] = _resolve(cfg, ag.get("feature_map_scales"), "feature_map_scales")
    out["base_anchor_shapes"] = _resolve(cfg, ag.get("base_anchor_shapes"), "base_anchor_shapes")

    for i, op in enumerate(cfg.get("detector_ops", [])):
        if not (isinstance(op, str) and ("set_box_selector_parameters" in op
                                         or "set_sliding_window_inferer" in op)):
            continue  # set_target_keys etc.: naming only
        fn, args, kw = _call(op, f"detector_ops[{i}]")
        if args:
            raise InvalidInput(f"inference.json detector_ops[{i}]: {_short(fn)} with positional "
                               "arguments; Hounsfield reads keyword arguments only here")
        for k, v in kw.items():
            if k == "roi_size":
                out["roi_size"] = list(_resolve(cfg, v, "roi_size"))
            elif k in ("score_thresh", "topk_candidates_per_level", "nms_thresh",
                       "detections_per_img", "overlap", "sw_batch_size", "mode"):
                out[k] = _resolve(cfg, v, k)
    if "roi_size" not in out:
        size = cfg.get("infer_patch_size")
        if size is None:
            raise InvalidInput("inference.json: no sliding-window roi_size (detector_ops "
                               "set_sliding_window_inferer or infer_patch_size)")
        out["roi_size"] = list(_resolve(cfg, size, "infer_patch_size"))

    sp = _transform(cfg, "Spacingd")
    if sp is None or "pixdim" not in sp:
        raise InvalidInput("inference.json preprocessing: no Spacingd pixdim (the voxel size "
                           "the network was trained at)")
    out["pixdim"] = tuple(float(v) for v in _resolve(cfg, sp["pixdim"], "Spacingd.pixdim"))
    sc = _transform(cfg, "ScaleIntensityRanged")
    if sc is None:
        raise InvalidInput("inference.json preprocessing: no ScaleIntensityRanged (the HU window)")
    for k in ("a_min", "a_max", "b_min", "b_max", "clip"):
        if k in sc:
            out[k] = _resolve(cfg, sc[k], f"ScaleIntensityRanged.{k}")
    ori = _transform(cfg, "Orientationd")
    if ori is not None:
        out["axcodes"] = _resolve(cfg, ori.get("axcodes", "RAS"), "Orientationd.axcodes")
    try:
        return ZooRetinaNetConfig.model_validate(out)
    except Exception as exc:  # pydantic.ValidationError: say which field
        raise InvalidInput(f"inference.json: {exc}") from None


def load_zoo_config(root: Path | str) -> ZooRetinaNetConfig:
    path = Path(root) / "configs" / "inference.json"
    if not path.is_file():
        raise InvalidInput(f"{root}: a MONAI zoo bundle needs configs/inference.json to be run")
    from hounsfield.models.bundle import read_json_object

    return read_retinanet_config(read_json_object(path))


# -- the network -----------------------------------------------------------------------------------

class _LayerGetter(torch.nn.ModuleDict):
    """The backbone's children up to the last returned layer; returns those layers' outputs.
    Same module names, hence the same state-dict keys, as torchvision's
    ``IntermediateLayerGetter`` that MONAI's ``BackboneWithFPN`` uses."""

    def __init__(self, backbone: torch.nn.Module, return_layers: dict[str, str]) -> None:
        wanted = dict(return_layers)
        layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
        for name, module in backbone.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class _BackboneWithFPN(torch.nn.Module):
    """MONAI's ``BackboneWithFPN`` (``body`` + ``fpn``) with :class:`_LayerGetter` as body."""

    def __init__(self, backbone: torch.nn.Module, returned_layers: list[int]) -> None:
        from monai.networks.blocks.feature_pyramid_network import (FeaturePyramidNetwork,
                                                                   LastLevelMaxPool)

        super().__init__()
        if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
            raise InvalidInput(f"returned_layers {returned_layers}: each in 1..4")
        self.body = _LayerGetter(backbone, {f"layer{k}": str(v)
                                            for v, k in enumerate(returned_layers)})
        stage2 = backbone.in_planes // 8
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=3, in_channels_list=[stage2 * 2 ** (i - 1) for i in returned_layers],
            out_channels=256, extra_blocks=LastLevelMaxPool(3))
        self.out_channels = 256

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def build_retinanet(cfg: ZooRetinaNetConfig):  # noqa: ANN201 - monai RetinaNetDetector
    """The bundle's ``RetinaNetDetector`` (network, anchors, box selector, sliding window)."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet

    kw = dict(cfg.backbone_args)
    kw.setdefault("spatial_dims", 3)
    kw.setdefault("n_input_channels", 1)
    try:
        backbone = getattr(resnet, cfg.backbone)(**kw)
    except TypeError as exc:
        raise InvalidInput(f"backbone {cfg.backbone}({kw}): {exc}") from None
    net = RetinaNet(spatial_dims=3, num_classes=cfg.num_classes, num_anchors=cfg.num_anchors,
                    feature_extractor=_BackboneWithFPN(backbone, cfg.returned_layers),
                    size_divisible=cfg.size_divisible)
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=cfg.feature_map_scales,
                                             base_anchor_shapes=cfg.base_anchor_shapes)
    det = RetinaNetDetector(network=net, anchor_generator=anchors, debug=False)
    det.set_box_selector_parameters(score_thresh=cfg.score_thresh,
                                    topk_candidates_per_level=cfg.topk_candidates_per_level,
                                    nms_thresh=cfg.nms_thresh,
                                    detections_per_img=cfg.detections_per_img)
    det.set_sliding_window_inferer(roi_size=cfg.roi_size, overlap=cfg.overlap,
                                   sw_batch_size=cfg.sw_batch_size, mode=cfg.mode, device="cpu")
    return det


def load_weights(det, root: Path | str) -> None:  # noqa: ANN001
    """``models/model.pt`` into the detector's network: a state dict, or ``{"model": ...}`` as
    MONAI's CheckpointLoader saves it (tensors only: ``weights_only``)."""
    path = Path(root) / "models" / "model.pt"
    if not path.is_file():
        raise InvalidInput(f"{root}: no models/model.pt (TorchScript-only bundles are not run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: say what the file is not
        raise InvalidInput(f"{path}: not a PyTorch weights file: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InvalidInput(f"{path}: expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = det.network.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise InvalidInput(f"{path}: weights do not fit the network the config describes: "
                           f"{str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise InvalidInput(f"{path}: weights do not fit the network the config describes "
                           f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                           f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    det.network.eval()


def reorient(vol, axcodes: str = "RAS"):  # noqa: ANN001, ANN201 - imaging.Volume
    """The same voxels flipped / transposed so the voxel axes (i, j, k) point along ``axcodes``
    in RAS terms (MONAI's ``Orientation``); geometry updated, LPS affine as always."""
    from nibabel.orientations import (apply_orientation, axcodes2ornt, inv_ornt_aff,
                                      io_orientation, ornt_transform)

    from hounsfield.imaging.volume import Volume

    ras = vol.affine_ras
    tf = ornt_transform(io_orientation(ras), axcodes2ornt(tuple(axcodes)))
    if np.array_equal(tf, [[0, 1], [1, 1], [2, 1]]):
        return vol
    ijk = vol.array.transpose(2, 1, 0)
    arr = apply_orientation(ijk, tf)
    return Volume.from_ras_affine(np.ascontiguousarray(arr.transpose(2, 1, 0)),
                                  ras @ inv_ornt_aff(tf, ijk.shape), modality=vol.modality,
                                  series_instance_uid=vol.series_instance_uid,
                                  meta=dict(vol.meta))
