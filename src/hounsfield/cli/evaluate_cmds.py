"""``hounsfield evaluate``: score predictions (a CSV, or a registered model on a dataset split)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli.common import DEVICE_HELP, console, edge, state
from hounsfield.errors import InvalidInput


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)


def evaluate_cmd(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(help="registered model NAME[@VERSION]")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset NAME[@VERSION] (with MODEL)")] = None,
    split: Annotated[str, typer.Option(help="split to score: test | heldout | validation")] = "test",
    predictions: Annotated[Optional[Path], typer.Option(help="LUNA16-style predictions CSV")] = None,
    annotations: Annotated[Optional[Path], typer.Option(help="LUNA16 annotations CSV")] = None,
    excluded: Annotated[Optional[Path], typer.Option(help="annotations_excluded.csv (ignored findings)")] = None,
    scans: Annotated[Optional[Path], typer.Option(help="evaluated series list (default: all in both CSVs)")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("evaluation"),
    fp_per_scan: Annotated[float, typer.Option(help="operating point: FP/scan budget")] = 1.0,
    min_detection_rate: Annotated[float, typer.Option(help="target: detection rate")] = 0.95,
    max_fn_per_100: Annotated[float, typer.Option(help="target: missed nodules per 100")] = 1.0,
    min_cpm: Annotated[Optional[float], typer.Option(help="target: CPM")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for 95% CIs")] = 1000,
    register_report: Annotated[bool, typer.Option("--attach/--no-attach",
                                                  help="attach the report to the model version")] = True,
    tta: Annotated[Optional[int], typer.Option(
        help="two-stage models: re-score the top K candidates over 8 flips (0 = off; default: "
             "the model's setting)")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Score detections like LUNA16 (FROC, CPM, operating point, breakdowns, pass/fail)."""
    from hounsfield.evaluate.study import AcceptanceTargets

    with edge():
        try:
            targets = AcceptanceTargets(operating_fp_per_scan=fp_per_scan,
                                        min_detection_rate=min_detection_rate,
                                        max_fn_per_100=max_fn_per_100, min_cpm=min_cpm)
        except ValueError as exc:
            raise InvalidInput(f"invalid acceptance targets: {exc}") from None
        if predictions is not None:
            if annotations is None:
                raise InvalidInput("--predictions needs --annotations")
            report, jp, hp = _evaluate_csv(predictions, annotations, excluded, scans, out,
                                           targets, bootstrap)
        elif model is not None:
            if dataset is None:
                raise InvalidInput("scoring a model needs --dataset NAME[@VERSION]")
            from hounsfield.datasets.manifest import open_dataset
            from hounsfield.evaluate.runner_eval import evaluate_model
            from hounsfield.infer.device import resolve_device

            resolve_device(device)  # a bad --device fails before any work
            st = state(ctx)
            ds = open_dataset(st.settings, dataset)
            report, jp, hp = evaluate_model(st.archive, st.settings, model, ds, split,
                                            out, targets=targets, bootstrap=bootstrap,
                                            attach=register_report, tta_top_k=tta,
                                            device=device)
        else:
            raise InvalidInput("give MODEL --dataset D, or --predictions CSV --annotations CSV")
        print_summary(report)
        console.print(f"report: {hp}\njson:   {jp}")
        if not report["passed"]:
            raise typer.Exit(1)


def _evaluate_csv(predictions, annotations, excluded, scans, out, targets, bootstrap):
    from hounsfield.evaluate.luna_csv import read_annotations, read_predictions, read_scan_list
    from hounsfield.evaluate.report import write_report
    from hounsfield.evaluate.study import evaluate_detections

    nods = read_annotations(annotations)
    dets = read_predictions(predictions)
    exc = read_annotations(excluded, allow_zero_diameter=True) if excluded else []
    sites: dict[str, str] = {}
    if scans is not None:
        scan_list, sites = read_scan_list(scans)
        unknown = sorted({d.scan for d in dets} - set(scan_list))
        if unknown:
            console.print(f"[yellow]warning:[/] {len(unknown)} predicted series not in the scan "
                          f"list are ignored (first: {unknown[0]})")
    else:
        scan_list = sorted({n.scan for n in nods} | {d.scan for d in dets})
    report = evaluate_detections(scan_list, nods, dets, excluded=exc, scan_sites=sites,
                                 targets=targets, bootstrap=bootstrap)
    jp, hp = write_report(report, out, title="Nodule detection study",
                          context={"predictions": predictions, "annotations": annotations})
    return report, jp, hp


def print_summary(report: dict) -> None:
    op = report["operating_point"]
    t = Table(title="nodule detection study", show_header=False)

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    t.add_row("scans / nodules / detections",
              f"{report['scans']} / {report['nodules']} / {report['detections']}")
    cpm = report["cpm"]
    lo, hi = report["cpm_ci95"]
    t.add_row("CPM (95% CI)", "–" if cpm is None else f"{cpm:.3f} ({lo:.3f}–{hi:.3f})")
    t.add_row("sensitivity at 1 FP/scan", pct(report["sensitivity_at_1fp"]))
    t.add_row(f"operating point (≤{op['fp_per_scan_target']:g} FP/scan) detection rate",
              pct(op["sensitivity"]))
    t.add_row("false negatives per 100", "–" if op["fn_per_100"] is None else f"{op['fn_per_100']:.1f}")
    t.add_row("FP/scan at operating point", f"{op['fp_per_scan']:.2f}")
    t.add_row("per-scan sensitivity / specificity",
              f"{pct(op['per_scan_sensitivity'])} / {pct(op['per_scan_specificity'])}")
    if "stage1_recall" in report:
        t.add_row("stage-1 candidates on a nodule (two-stage)", pct(report["stage1_recall"]))
    for c in report["checks"]:
        t.add_row(f"target: {c['name']} {c['op']} {c['target']:g}",
                  "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]")
    console.print(t)
