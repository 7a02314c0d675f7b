"""Registered model versions for the registry tests: a small bundle folder (the configs the
registry reads; no weights) registered in a real MLflow, and real evaluation reports (the
evaluate package's own report of synthetic detections) attached to it."""

from __future__ import annotations

import json
from pathlib import Path

from hounsfield.evaluate.froc import Detection, Nodule
from hounsfield.evaluate.report import write_report
from hounsfield.evaluate.study import AcceptanceTargets, evaluate_detections
from hounsfield.registry.mlflow_registry import ModelRegistry, ModelVersionInfo

SCANS = ["scan-1", "scan-2", "scan-3"]
NODULES = [Nodule("scan-1", 10, 10, 10, 8), Nodule("scan-2", -20, 5, 30, 6),
           Nodule("scan-3", 0, 0, 0, 12)]


def register_version(reg: ModelRegistry, tmp: Path, name: str = "nodules",
                     targets: dict | None = None) -> ModelVersionInfo:
    """A new version of ``name`` whose bundle names a recipe with ``targets``."""
    bundle = tmp / f"bundle-{name}-{len(list(tmp.glob('bundle-*')))}"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"name": name, "version": "1"}))
    recipe = {"name": "lung-nodule-detection",
              "targets": targets or AcceptanceTargets().model_dump()}
    (bundle / "configs" / "hounsfield.json").write_text(json.dumps({"recipe": recipe}))
    run_id = reg.start_run(f"test {name}", {"k": 1})
    return reg.register(name, run_id, bundle, {"dataset": "luna@1"})


def attach(reg: ModelRegistry, mv: ModelVersionInfo, tmp: Path, *, good: bool,
           label: str = "luna-v1-test", targets: AcceptanceTargets | None = None) -> dict:
    """Attach a real report: every nodule found (``good``) or only one of three."""
    hits = NODULES if good else NODULES[:1]
    dets = [Detection(n.scan, n.x, n.y, n.z, 0.9) for n in hits]
    dets.append(Detection("scan-1", 60, 60, 60, 0.2))  # one false positive
    report = evaluate_detections(SCANS, NODULES, dets, targets=targets or AcceptanceTargets(),
                                 bootstrap=10)
    out = tmp / f"report-{mv.version}-{label}"
    write_report(report, out, title=f"{mv.ref} on {label}")
    reg.attach_report(mv, out, report, label)
    return report
