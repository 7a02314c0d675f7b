"""Model packages in the MONAI bundle layout (https://docs.monai.io/en/stable/mb_specification.html).

::

    <bundle>/configs/metadata.json    MONAI metadata (versions, task, network_data_format)
    <bundle>/configs/inference.json   network_def (``_target_`` + args), as MONAI tools expect
    <bundle>/configs/hounsfield.json  what Hounsfield needs to run it: plan, network spec,
                                      inference settings, recipe, lineage (typed, no expressions)
    <bundle>/models/model.pt          the network's state_dict
    <bundle>/docs/README.md

Hounsfield never evaluates expressions from a bundle: networks are built from the explicit
registry in :mod:`hounsfield.models.detector`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hounsfield.errors import InvalidInput
from hounsfield.models.detector import NetworkSpec, build_network

_TARGETS = {"basic_unet": "monai.networks.nets.BasicUNet",
            "patch_cnn": "hounsfield.models.detector.PatchClassifier"}


def write_bundle(path: Path | str, net: torch.nn.Module, *, recipe: dict[str, Any],
                 lineage: dict[str, Any], version: str = "0.1.0",
                 description: str = "") -> Path:
    """Write a MONAI-layout bundle for a trained nodule detector."""
    import monai

    root = Path(path)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    spec = NetworkSpec.model_validate(recipe["network"])
    two_stage = recipe.get("detector", "heatmap") == "two-stage"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()},
               root / "models" / "model.pt")
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
                  "0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": {version: "trained by hounsfield"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "name": recipe.get("name", "lung-nodule-detection"),
        "task": ("CT lung nodule detection (blob candidates + patch classifier)" if two_stage
                 else "CT lung nodule detection (centre heatmap + diameter)"),
        "description": description or recipe.get("description", ""),
        "authors": "Hounsfield",
        "copyright": "Copyright (c) the model's owner",
        "intended_use": "research; findings are proposals for a radiologist to confirm",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                                 "num_channels": 1, "spatial_shape": list(recipe["patch"]),
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "candidate logit",
                                 "num_channels": 1, "spatial_shape": [], "dtype": "float32",
                                 "value_range": [], "is_patch_data": True,
                                 "channel_def": {"0": "nodule logit"}}} if two_stage else
                        {"pred": {"type": "heatmap", "format": "logits+log-diameter",
                                 "num_channels": 2, "spatial_shape": list(recipe["patch"]),
                                 "dtype": "float32", "value_range": [], "is_patch_data": True,
                                 "channel_def": {"0": "centre logit", "1": "log diameter mm"}}},
        },
        "system": {"python": platform.python_version()},
    }
    inference = {
        "network_def": {"_target_": _TARGETS.get(spec.name, spec.name), "spatial_dims": 3,
                        "in_channels": 1, "out_channels": 2, "features": list(spec.features),
                        "norm": ["instance", {"affine": True, "eps": 1e-3}], "dropout": spec.dropout},
        "roi_size": list(recipe["inference"]["roi"]),
        "overlap": recipe["inference"]["overlap"],
    }
    if two_stage:
        inference = {"network_def": {"_target_": _TARGETS[spec.name],
                                     "spec": spec.model_dump(mode="json")},
                     "patch_size": list(recipe["patch"])}
    hf = {"format": "hounsfield-nodule-detector/1", "plan": recipe["plan"],
          "detector": recipe.get("detector", "heatmap"), "candidates": recipe.get("candidates"),
          "patch": list(recipe["patch"]),
          "network": spec.model_dump(mode="json"), "inference": recipe["inference"],
          "recipe": recipe, "lineage": lineage}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    (root / "configs" / "hounsfield.json").write_text(json.dumps(hf, indent=2, default=str))
    (root / "docs" / "README.md").write_text(
        f"# {metadata['name']}\n\n{metadata['description']}\n\nLineage:\n\n```json\n"
        f"{json.dumps(lineage, indent=2, default=str)}\n```\n")
    return root


def read_json_object(path: Path) -> dict[str, Any]:
    """A bundle config file that must hold a JSON object (clear errors otherwise)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a JSON object")
    return data


def read_bundle_info(path: Path | str) -> dict[str, Any]:
    """Metadata of a bundle directory; ``hounsfield`` is None for foreign (model-zoo) bundles."""
    root = Path(path)
    meta = root / "configs" / "metadata.json"
    if not meta.is_file():
        raise InvalidInput(f"{root} is not a MONAI bundle: no configs/metadata.json")
    info = {"metadata": read_json_object(meta)}
    hf = root / "configs" / "hounsfield.json"
    info["hounsfield"] = json.loads(hf.read_text()) if hf.is_file() else None
    weights = [p.name for p in (root / "models").glob("*")] if (root / "models").is_dir() else []
    info["weights"] = sorted(weights)
    return info


def load_network(path: Path | str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a Hounsfield bundle with its weights, and its ``hounsfield.json``."""
    info = read_bundle_info(path)
    hf = info["hounsfield"]
    if hf is None:
        name = info["metadata"].get("name", Path(path).name)
        raise InvalidInput(f"bundle {name!r} is a MONAI model-zoo bundle: `hounsfield infer` and "
                           "`evaluate` run it, but training and fine-tuning (--base) start from "
                           "Hounsfield's own bundles only")
    net = build_network(NetworkSpec.model_validate(hf["network"]))
    state = torch.load(Path(path) / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return net, hf
