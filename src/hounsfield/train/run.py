"""A training run: recipe + dataset (+ base model) -> Lightning fit -> bundle -> evaluation ->
registered model version with lineage (and, for fine-tuning, a base-vs-fine-tuned report).

Runs under torchrun unchanged: Lightning reads the torchrun environment (DDP, gloo on CPUs,
NCCL on GPUs); only rank 0 writes the bundle, evaluates and registers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hounsfield.errors import InvalidInput


@dataclass
class TrainResult:
    run_dir: Path
    losses: list[float]
    epochs: int
    steps: int
    seconds: float
    best_val_cpm: float | None
    model: str | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_paths: dict[str, Path] = field(default_factory=dict)


def lightning_precision(choice: str, accelerator: str) -> str:
    """Map a recipe precision to Lightning's: bf16 autocast on CPUs that support it."""
    if choice == "fp32":
        return "32-true"
    cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if accelerator == "gpu":
        return "bf16-mixed" if choice == "bf16" else "16-mixed"
    if choice in ("bf16", "amp", "auto"):
        if not cpu_bf16:
            if choice == "bf16":
                raise InvalidInput("this CPU has no bf16 support; use precision fp32")
            return "32-true"
        return "bf16-mixed"
    return "32-true"


def code_version() -> str:
    from hounsfield import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _splits(ds, fine_tune: bool) -> tuple[str, str, list[str]]:
    held = bool(ds.manifest["heldout_sites"])
    if fine_tune and held:
        return "heldout-train", "heldout-validation", ["heldout-test"]
    return "train", "validation", ["test"] + (["heldout-test"] if held else [])


def train(archive, settings, recipe_name: str, dataset_ref: str, *, model_name: str | None = None,
          base: str | None = None, preset: str | None = None,
          overrides: dict[str, Any] | None = None, resume: str | None = None,
          run_dir: Path | None = None, register: bool = True, evaluate: bool = True,
          bootstrap: int = 1000, device: str = "auto", devices: int | str | list[int] = "auto",
          progress_bar: bool = True, log=print) -> TrainResult:
    """``device``: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` — Lightning's accelerator, where
    the two-stage blob filter runs, and where the evaluation afterwards runs; ``devices``:
    Lightning's device count (under torchrun: the world size)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from hounsfield.datasets.manifest import check_manifest, open_dataset
    from hounsfield.infer.device import resolve_device
    from hounsfield.models.bundle import load_network, write_bundle
    from hounsfield.registry.mlflow_registry import ModelRegistry
    from hounsfield.train.data import prepare_split
    from hounsfield.train.module import EpochSeed, LossRecorder, NoduleDetectionModule
    from hounsfield.train.recipe import load_recipe

    t_start = time.perf_counter()
    dev = resolve_device(device)  # a bad --device fails before any work
    recipe = load_recipe(recipe_name, preset=preset, overrides=overrides)
    ds = open_dataset(settings, dataset_ref)
    ok, why = check_manifest(ds.manifest)
    if not ok:
        raise InvalidInput(f"dataset {ds.ref} fails its check: {why}")
    reg = ModelRegistry(settings) if (register or base) else None
    base_mv = base_net = None
    if base:
        base_mv = reg.resolve(base)
        base_net, base_hf = load_network(reg.bundle_path(base_mv))
        # the fine-tuned model keeps the base model's input plan and architecture (and, for
        # a two-stage model, its candidate generator and patch size)
        keep = {k: base_hf[k] for k in ("detector", "candidates", "patch")
                if base_hf.get(k) is not None}
        if "detector" not in keep:
            keep["detector"] = "heatmap"  # bundles from before the two-stage detector
        recipe = type(recipe).model_validate({**recipe.model_dump(mode="json"), **keep,
                                              "plan": base_hf["plan"],
                                              "network": base_hf["network"]})
    train_split, val_split, test_splits = _splits(ds, fine_tune=base is not None)
    rank = int(os.environ.get("RANK", "0"))
    cache = Path(settings.data_dir) / "cache" / "preprocessed"
    log(f"preparing {ds.ref}: {train_split} / {val_split} (plan {recipe.plan.key()})")
    tr = prepare_split(archive, ds, train_split, recipe.plan, cache)
    va = prepare_split(archive, ds, val_split, recipe.plan, cache,
                       limit=recipe.validation.max_volumes)
    if not tr or not va:
        raise InvalidInput(f"dataset {ds.ref} has no series in {train_split if not tr else val_split}")
    name = model_name or recipe.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir or Path(settings.data_dir) / "runs" / f"{name}-{stamp}")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    lr = recipe.optimizer.lr * (recipe.fine_tune_lr_factor if base else 1.0)
    if recipe.detector == "two-stage":
        from hounsfield.train.two_stage import CandidateClassifierModule

        log(f"stage-1 candidates for {len(tr)} + {len(va)} volumes")
        module = CandidateClassifierModule(recipe, tr, va, lr=lr, cache_dir=cache,
                                           device=str(dev))
    else:
        module = NoduleDetectionModule(recipe, tr, va, lr=lr)
    if base_net is not None:
        module.net.load_state_dict(base_net.state_dict())
    run_id = None
    logger: Any = False
    if register and rank == 0:
        from lightning.pytorch.loggers import MLFlowLogger

        params = {"recipe": recipe.name, "preset": preset or "cpu", "dataset": ds.ref,
                  "dataset_hash": ds.manifest["hash"], "base_model": base_mv.ref if base_mv else "",
                  "code_version": code_version(), **_flat(recipe.model_dump(mode="json"))}
        run_id = reg.start_run(f"{name} {stamp}", params)
        logger = MLFlowLogger(tracking_uri=reg.uri, run_id=run_id)
    accel = "gpu" if dev.type == "cuda" else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and dev.index is not None:
        devices = [dev.index]  # --device cuda:N: that GPU
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_cpm", mode="max",
                           save_last=True, save_top_k=1, filename="best-{epoch}")
    recorder = LossRecorder(run_dir / "loss.json")
    trainer = L.Trainer(
        accelerator=accel, devices=devices if world == 1 else world,
        strategy="ddp" if world > 1 else "auto",
        precision=lightning_precision(recipe.precision, accel),
        max_epochs=recipe.max_epochs, max_steps=recipe.max_steps,
        max_time={"minutes": recipe.max_minutes},
        check_val_every_n_epoch=recipe.validation.every_n_epochs,
        callbacks=[ckpt, EarlyStopping(monitor="val_cpm", mode="max",
                                       patience=recipe.early_stopping.patience,
                                       min_delta=recipe.early_stopping.min_delta,
                                       strict=False),
                   recorder, EpochSeed()],
        logger=logger, deterministic=True, use_distributed_sampler=False,
        num_sanity_val_steps=0, enable_progress_bar=progress_bar, log_every_n_steps=1,
        gradient_clip_val=recipe.gradient_clip, gradient_clip_algorithm="norm",
        default_root_dir=str(run_dir), enable_model_summary=False,
    )
    trainer.fit(module, ckpt_path=resume)
    best = ckpt.best_model_score
    result = TrainResult(run_dir, recorder.losses, trainer.current_epoch, trainer.global_step,
                         time.perf_counter() - t_start, float(best) if best is not None else None)
    if rank != 0:
        return result
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
    recipe_json = recipe.model_dump(mode="json")
    lineage = {"dataset": ds.ref, "dataset_hash": ds.manifest["hash"],
               "code_version": code_version(), "recipe": recipe.name, "preset": preset or "cpu",
               "recipe_hash": hashlib.sha256(json.dumps(recipe_json, sort_keys=True).encode())
               .hexdigest()[:16],
               "base_model": base_mv.ref if base_mv else "", "train_split": train_split,
               "mlflow_run": run_id or "", "epochs": result.epochs, "steps": result.steps,
               "train_seconds": round(result.seconds), "best_val_cpm": result.best_val_cpm}
    bundle = write_bundle(run_dir / "bundle", module.net, recipe=recipe_json, lineage=lineage)
    if not (register and evaluate):
        return result
    mv = reg.register(name, run_id, bundle, lineage,
                      description=f"{recipe.name} trained on {ds.ref}")
    result.model = mv.ref
    _evaluate_all(archive, settings, reg, mv, ds, test_splits, recipe, run_dir, result,
                  bootstrap, base_mv, log, dev)
    reg.client.set_terminated(run_id)
    return result


def _evaluate_all(archive, settings, reg, mv, ds, splits, recipe, run_dir, result, bootstrap,
                  base_mv, log, device) -> None:
    from hounsfield.evaluate.report import render_comparison_html
    from hounsfield.evaluate.runner_eval import evaluate_runner
    from hounsfield.infer.loader import load_runner

    runner = load_runner(reg.bundle_path(mv), name=mv.name, version=mv.version, device=device)
    for split in splits:
        if not ds.series(split):
            continue
        label = f"{ds.name}-v{ds.version}-{split}"
        out = run_dir / "evaluation" / label
        log(f"evaluating {mv.ref} on {ds.ref} / {split}")
        rep, _jp, hp = evaluate_runner(archive, settings, runner, ds, split, out,
                                       targets=recipe.targets, bootstrap=bootstrap)
        reg.attach_report(mv, out, rep, label)
        result.reports[split] = rep
        result.report_paths[split] = hp
        if base_mv is not None:
            base_runner = load_runner(reg.bundle_path(base_mv), name=base_mv.name,
                                      version=base_mv.version, device=device)
            bout = run_dir / "evaluation" / f"{label}-base"
            brep, _bj, _bh = evaluate_runner(archive, settings, base_runner, ds, split, bout,
                                             targets=recipe.targets, bootstrap=bootstrap)
            cmp_dir = run_dir / "evaluation" / f"{label}-comparison"
            cmp_dir.mkdir(parents=True, exist_ok=True)
            (cmp_dir / "report.html").write_text(render_comparison_html(
                brep, rep, title=f"{base_mv.ref} vs fine-tuned {mv.ref} on {ds.ref} / {split}",
                context={"base": base_mv.ref, "fine-tuned": mv.ref, "dataset": ds.ref,
                         "split": split}))
            (cmp_dir / "comparison.json").write_text(json.dumps(
                {"base": base_mv.ref, "fine_tuned": mv.ref, "split": split,
                 "base_report": brep, "fine_tuned_report": rep}, default=str))
            reg.client.log_artifacts(mv.run_id, str(cmp_dir), f"evaluation/{label}-comparison")
            result.reports[f"{split}-base"] = brep
            result.report_paths[f"{split}-comparison"] = cmp_dir / "report.html"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
