"""Score a detector on a dataset split: run inference on every series, then the study report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hounsfield.evaluate.froc import Detection
from hounsfield.evaluate.luna_csv import write_predictions
from hounsfield.evaluate.report import write_report
from hounsfield.evaluate.study import AcceptanceTargets, evaluate_detections


def predict_split(archive, settings, runner, ds, split: str, *, precision: str = "fp32",
                  on_item=None) -> tuple[list[str], list[Detection], dict[str, str], float,
                                         dict[str, Any] | None]:
    """Detections of ``runner`` on every series of a split (preprocessed volumes are cached),
    and for a two-stage runner its stage-1 candidates per series (patient mm)."""
    from hounsfield.deploy.two_stage import TwoStageRunner
    from hounsfield.train.data import _cached, volume_key

    cache = Path(settings.data_dir) / "cache" / "preprocessed"
    scans, dets, sites = [], [], {}
    two_stage = isinstance(runner, TwoStageRunner)
    candidates: dict[str, Any] | None = {} if two_stage else None
    t0 = time.perf_counter()
    for row in ds.series(split):
        uid = row["series_instance_uid"]
        vol = _cached(archive, row, runner.plan, cache)
        if two_stage:  # candidates cached like the volume
            res = runner.run_volume(vol, precision=precision, preprocessed=True,
                                    cache_dir=cache, cache_key=volume_key(row, runner.plan),
                                    keep_candidates=True)
            candidates[uid] = res.candidates_mm
        else:
            res = runner.run_volume(vol, precision=precision, preprocessed=True)
        scans.append(uid)
        sites[uid] = row["site"]
        dets.extend(Detection(uid, f.x_mm, f.y_mm, f.z_mm, f.probability, f.diameter_mm)
                    for f in res.findings)
        if on_item:
            on_item(row)
    return scans, dets, sites, time.perf_counter() - t0, candidates


def evaluate_runner(archive, settings, runner, ds, split: str, out: Path, *,
                    targets: AcceptanceTargets, bootstrap: int = 1000, title: str = "",
                    context: dict[str, Any] | None = None, precision: str = "fp32",
                    on_item=None) -> tuple[dict[str, Any], Path, Path]:
    scans, dets, sites, secs, cands = predict_split(archive, settings, runner, ds, split,
                                                    precision=precision, on_item=on_item)
    from hounsfield.errors import InvalidInput

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


def evaluate_model(archive, settings, model_ref: str, dataset_ref: str, split: str, out: Path, *,
                   targets: AcceptanceTargets | None = None, bootstrap: int = 1000,
                   attach: bool = True, tta_top_k: int | None = None,
                   ) -> tuple[dict[str, Any], Path, Path]:
    """``hounsfield evaluate MODEL --dataset D --split S``: report, attached to the version."""
    from hounsfield.datasets.manifest import open_dataset
    from hounsfield.deploy.inference import set_tta
    from hounsfield.models.bundle import load_runner
    from hounsfield.registry.mlflow_registry import ModelRegistry

    reg = ModelRegistry(settings)
    mv = reg.resolve(model_ref)
    runner = load_runner(reg.bundle_path(mv), name=mv.name, version=mv.version)
    set_tta(runner, tta_top_k)
    ds = open_dataset(settings, dataset_ref)
    tta = getattr(runner, "tta_top_k", 0)
    report, jp, hp = evaluate_runner(archive, settings, runner, ds, split, out,
                                     targets=targets or AcceptanceTargets(), bootstrap=bootstrap,
                                     context={"tta_top_k": tta} if tta else None)
    if attach:
        reg.attach_report(mv, out, report,
                          f"{ds.name}-v{ds.version}-{split}" + (f"-tta{tta}" if tta else ""))
    return report, jp, hp
