"""Score a model on a dataset split: run inference on every series, then the study report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from hounsfield.errors import InvalidInput
from hounsfield.evaluate.froc import Detection
from hounsfield.evaluate.luna_csv import write_predictions
from hounsfield.evaluate.report import write_report
from hounsfield.evaluate.study import AcceptanceTargets, evaluate_detections
from hounsfield.infer.precision import Precision
from hounsfield.infer.runner import Runner
from hounsfield.models.volume import preprocessed_volume, volume_key


def predict_split(archive, settings, runner: Runner, ds, split: str, *,  # noqa: ANN001
                  precision: Precision = "fp32", tta_top_k: int | None = None, on_item=None,
                  ) -> tuple[list[str], list[Detection], dict[str, str], float,
                             dict[str, Any] | None]:
    """Detections of ``runner`` on every series of a split (preprocessed volumes and stage-1
    candidates are cached), and for a model with a candidate stage (two-stage) its
    candidates per series (patient mm); None for the others."""
    cache = Path(settings.data_dir) / "cache" / "preprocessed"
    scans, dets, sites = [], [], {}
    candidates: dict[str, Any] = {}
    t0 = time.perf_counter()
    for row in ds.series(split):
        uid = row["series_instance_uid"]
        vol = preprocessed_volume(archive, row, runner.plan, cache)
        res = runner.run_volume(vol, precision=precision, preprocessed=True, tta_top_k=tta_top_k,
                                cache_dir=cache, cache_key=volume_key(row, runner.plan),
                                keep_candidates=True)
        if res.candidates_mm is not None:
            candidates[uid] = res.candidates_mm
        scans.append(uid)
        sites[uid] = row["site"]
        dets.extend(Detection(uid, f.x_mm, f.y_mm, f.z_mm, f.probability, f.diameter_mm)
                    for f in res.findings)
        if on_item:
            on_item(row)
    return scans, dets, sites, time.perf_counter() - t0, candidates or None


def evaluate_runner(archive, settings, runner: Runner, ds, split: str, out: Path, *,  # noqa: ANN001
                    targets: AcceptanceTargets, bootstrap: int = 1000, title: str = "",
                    context: dict[str, Any] | None = None, precision: Precision = "fp32",
                    tta_top_k: int | None = None, on_item=None,
                    ) -> tuple[dict[str, Any], Path, Path]:
    """The study report of ``runner`` on a split, written to ``out`` (JSON, HTML, predictions)."""
    scans, dets, sites, secs, cands = predict_split(archive, settings, runner, ds, split,
                                                    precision=precision, tta_top_k=tta_top_k,
                                                    on_item=on_item)
    if not scans:
        raise InvalidInput(f"dataset {ds.ref} has no series in split {split!r}")
    report = evaluate_detections(scans, ds.nodules(scans), dets, scan_sites=sites,
                                 targets=targets, bootstrap=bootstrap, candidates=cands)
    report["inference_seconds"] = round(secs, 2)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", dets)
    ctx = {"model": f"{runner.model_name}@{runner.model_version}", "dataset": ds.ref,
           "dataset_hash": ds.manifest["hash"], "split": split, **(context or {})}
    jp, hp = write_report(report, out, title=title or f"Nodule detection: {ctx['model']} on "
                                                    f"{ds.ref} / {split}", context=ctx)
    return report, jp, hp


def evaluate_model(archive, settings, model_ref: str, ds, split: str,  # noqa: ANN001
                   out: Path, *, targets: AcceptanceTargets | None = None, bootstrap: int = 1000,
                   attach: bool = True, tta_top_k: int | None = None,
                   device: str | torch.device = "auto") -> tuple[dict[str, Any], Path, Path]:
    """``hounsfield evaluate MODEL --dataset D --split S``: the report of a registered model on
    a split of ``ds`` (an opened dataset version: ``datasets.manifest.open_dataset``), attached
    to the model version."""
    from hounsfield.infer.loader import load_model
    from hounsfield.infer.runner import RunOptions
    from hounsfield.registry.mlflow_registry import ModelRegistry

    reg = ModelRegistry(settings)
    mv = reg.resolve(model_ref)
    runner = load_model(settings, mv.ref, device)
    runner.check(RunOptions(tta_top_k=tta_top_k))
    tta = tta_top_k if tta_top_k is not None else getattr(runner, "tta_top_k", 0)
    report, jp, hp = evaluate_runner(archive, settings, runner, ds, split, out,
                                     targets=targets or AcceptanceTargets(), bootstrap=bootstrap,
                                     context={"tta_top_k": tta} if tta else None,
                                     tta_top_k=tta_top_k)
    if attach:
        reg.attach_report(mv, out, report,
                          f"{ds.name}-v{ds.version}-{split}" + (f"-tta{tta}" if tta else ""))
    return report, jp, hp
