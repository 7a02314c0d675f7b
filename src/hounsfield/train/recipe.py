"""Training recipes: YAML files validated by pydantic (no eval, no ``$`` expressions).

A recipe file holds the CPU defaults at the top level and named ``presets`` (e.g. ``gpu``) that
override some fields; :func:`load_recipe` merges the chosen preset and validates the result.
Recipes ship in ``hounsfield/train/recipes/<name>.yaml`` (an explicit list, :data:`RECIPES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hounsfield.errors import InvalidInput
from hounsfield.evaluate.study import AcceptanceTargets
from hounsfield.models.candidates import CandidateSpec
from hounsfield.models.detector import NetworkSpec
from hounsfield.models.volume import PreprocessPlan

RECIPE_DIR = Path(__file__).parent / "recipes"
RECIPES = ("lung-nodule-detection",)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Optim(Strict):
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)


class EarlyStop(Strict):
    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class Validation(Strict):
    every_n_epochs: int = Field(default=1, ge=1)
    max_volumes: int = Field(default=0, ge=0, description="0 = all validation series")


class HardNegatives(Strict):
    """Hard-negative mining for the two-stage classifier: every ``every_n_epochs`` the current
    network scores ``sample`` random training negatives (and the previous pool); the ``pool``
    highest-scoring form the hard pool, from which ``fraction`` of the negatives are drawn."""

    fraction: float = Field(default=0.0, ge=0, le=1, description="0 = off")
    sample: int = Field(default=4000, ge=1)
    pool: int = Field(default=2000, ge=1)
    every_n_epochs: int = Field(default=1, ge=1)


class Augment(Strict):
    """Extra augmentation of the two-stage classifier's patches (0 = off)."""

    intensity: float = Field(default=0.0, ge=0, le=0.5, description="contrast scale and "
                             "offset: x * (1 + N(0, s)) + N(0, s / 4), per patch")
    noise: float = Field(default=0.0, ge=0, le=0.5, description="Gaussian noise std")
    candidate_positives: float = Field(default=0.0, ge=0, le=1, description="share of "
                                       "positives centred on a stage-1 candidate that hits the "
                                       "nodule (as at inference) instead of the shifted truth")


class Inference(Strict):
    roi: tuple[int, int, int] = (64, 128, 128)
    overlap: float = Field(default=0.25, ge=0, lt=1)
    batch_size: int = Field(default=2, ge=1)
    threshold: float = Field(default=0.05, ge=0, le=1)
    top_k: int = Field(default=50, ge=1)
    tta_top_k: int = Field(
        default=0, ge=0, description="two-stage: re-score the k most probable candidates as the "
        "mean over the 8 flips of their patch (test-time augmentation; 0 = off)")


class Recipe(Strict):
    """Everything a training run needs besides the data (saved with the model)."""

    name: str
    description: str = ""
    task: Literal["nodule-detection"] = "nodule-detection"
    detector: Literal["heatmap", "two-stage"] = Field(
        default="heatmap", description="heatmap: one dense U-Net (sliding window); two-stage: "
        "blob candidates + a patch classifier (false-positive reduction)")
    candidates: CandidateSpec = Field(default_factory=CandidateSpec)
    plan: PreprocessPlan = Field(default_factory=PreprocessPlan)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    patch: tuple[int, int, int] = (32, 96, 96)
    batch_size: int = Field(default=4, ge=1)
    patches_per_volume: int = Field(default=8, ge=1)
    positive_fraction: float = Field(default=0.6, ge=0, le=1)
    optimizer: Optim = Field(default_factory=Optim)
    max_epochs: int = Field(default=50, ge=1)
    max_steps: int = Field(default=-1, ge=-1)
    max_minutes: float = Field(default=55.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "amp"] = "auto"
    early_stopping: EarlyStop = Field(default_factory=EarlyStop)
    validation: Validation = Field(default_factory=Validation)
    inference: Inference = Field(default_factory=Inference)
    hard_negatives: HardNegatives = Field(default_factory=HardNegatives)
    augment: Augment = Field(default_factory=Augment)
    size_loss_weight: float = Field(default=0.1, ge=0)
    gradient_clip: float = Field(default=12.0, gt=0, description="max gradient norm (nnU-Net's)")
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)
    fine_tune_lr_factor: float = Field(default=0.3, gt=0, le=1)
    targets: AcceptanceTargets = Field(default_factory=AcceptanceTargets)

    @model_validator(mode="after")
    def _tta_needs_two_stage(self) -> "Recipe":
        if self.inference.tta_top_k and self.detector != "two-stage":
            raise ValueError("inference.tta_top_k applies to the two-stage detector only "
                             "(set it to 0 for a heatmap recipe)")
        return self


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(name_or_path: str | Path, *, preset: str | None = None,
                overrides: dict[str, Any] | None = None) -> Recipe:
    """A shipped recipe by name, or a YAML file; ``preset`` merges ``presets[preset]``."""
    p = Path(name_or_path)
    if str(name_or_path) in RECIPES:
        p = RECIPE_DIR / f"{name_or_path}.yaml"
    elif not p.is_file():
        raise InvalidInput(f"unknown recipe {name_or_path!r}: not a shipped recipe "
                           f"({', '.join(RECIPES)}) nor a YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{p}: a recipe is a YAML mapping")
    presets = data.pop("presets", {}) or {}
    if preset is not None:
        if preset not in presets:
            raise InvalidInput(f"recipe {p.stem} has no preset {preset!r} "
                               f"(has: {', '.join(presets) or 'none'})")
        data = _merge(data, presets[preset])
    if overrides:
        data = _merge(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{p}: invalid recipe: {exc}") from None
