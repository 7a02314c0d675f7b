"""How visible is each nodule a detector missed? Contrast over the surrounding lung, per size.

For every nodule of a dataset split: the peak HU within half its radius minus the median of the
lung voxels (< -500 HU) in a shell 3-10 mm outside it, and that contrast in noise SDs (the
shell's robust SD, 1.4826 x MAD) — at the model's preprocessing plan and in the source CT —
split by whether the evaluation detected it at its operating point (a prediction within the
nodule's radius scoring at least the report's threshold; the LUNA16 hit rule).

    PYTHONPATH=src python -m benchmarks.nodule_visibility --data-dir var/full --dataset lung@2 \
        --split test --report var/full/mlflow/artifacts/.../evaluation/lung-v2-test
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

BINS = [(0, 4), (4, 5), (5, 6), (6, 8), (8, 15), (15, 100)]


def contrast(hu: np.ndarray, spacing_zyx, zyx: np.ndarray, r_mm: float) -> tuple[float, float]:
    """(peak - lung median) in HU and in robust noise SDs, around fractional voxel ``zyx``."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    c = np.round(zyx).astype(int)
    reach = np.ceil((r_mm + 10) / sp).astype(int) + 1
    lo, hi = np.maximum(c - reach, 0), np.minimum(c + reach + 1, hu.shape)
    sub = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    if sub.size == 0:
        return float("nan"), float("nan")
    grid = np.indices(sub.shape).reshape(3, -1).T + lo
    dist = np.linalg.norm((grid - zyx) * sp, axis=1).reshape(sub.shape)
    core = sub[dist <= max(r_mm / 2, 0.75 * sp.min())]
    shell = sub[(dist >= r_mm + 3) & (dist <= r_mm + 10)]
    lung = shell[shell < -500]
    if core.size == 0 or lung.size < 20:
        return float("nan"), float("nan")
    med = float(np.median(lung))
    sd = 1.4826 * float(np.median(np.abs(lung - med)))
    d = float(core.max()) - med
    return d, d / max(sd, 1e-3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="lung")
    ap.add_argument("--split", default="test")
    ap.add_argument("--report", required=True, help="an evaluation folder: report.json + "
                    "predictions.csv (hounsfield evaluate --out, or a registered model's)")
    a = ap.parse_args(argv)

    from hounsfield.cli.common import State
    from hounsfield.datasets.manifest import open_dataset
    from hounsfield.models.volume import PreprocessPlan, load_series, preprocessed_volume, to_voxel

    rep_dir = Path(a.report)
    report = json.loads((rep_dir / "report.json").read_text())
    thr = float(report["operating_point"]["threshold"])
    preds: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    with open(rep_dir / "predictions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            preds[row["seriesuid"]].append((float(row["coordX"]), float(row["coordY"]),
                                            float(row["coordZ"]), float(row["probability"])))
    st = State()
    st.overrides = {"data_dir": Path(a.data_dir)}
    ds = open_dataset(st.settings, a.dataset)
    plan_cfg = report.get("context", {}).get("plan")
    plan = (PreprocessPlan.model_validate(plan_cfg) if plan_cfg
            else PreprocessPlan(spacing_mm=(1.4, 1.4, 2.0), hu_min=-1000, hu_max=400))
    cache = Path(st.settings.data_dir) / "cache" / "preprocessed"
    rows = list(ds.series(a.split))
    nodules = defaultdict(list)
    for n in ds.nodules([r["series_instance_uid"] for r in rows]):
        nodules[n.scan].append(n)
    out = []
    for row in rows:
        uid = row["series_instance_uid"]
        if not nodules[uid]:
            continue
        prep = preprocessed_volume(st.archive, row, plan, cache)
        hu_plan = prep.array * (plan.hu_max - plan.hu_min) + plan.hu_min
        src = load_series(st.archive, uid)
        p = np.array(preds[uid]) if preds[uid] else np.zeros((0, 4))
        for n in nodules[uid]:
            xyz = np.array([[n.x, n.y, n.z]])
            dp, sp_ = contrast(hu_plan, prep.spacing[::-1], to_voxel(prep, xyz)[0],
                               n.diameter_mm / 2)
            ds_, ss = contrast(src.array, src.spacing[::-1], to_voxel(src, xyz)[0],
                               n.diameter_mm / 2)
            hit = bool(len(p) and np.any((np.linalg.norm(p[:, :3] - xyz, axis=1)
                                          < n.diameter_mm / 2) & (p[:, 3] >= thr)))
            out.append((n.diameter_mm, hit, dp, sp_, ds_, ss))

    def med(sel, i):
        v = [r[i] for r in sel if np.isfinite(r[i])]
        return f"{np.median(v):.0f}" if v else "-"

    print(f"{report['context'].get('model', '?')} on {a.dataset} / {a.split}: {len(out)} nodules, "
          f"operating threshold {thr:.4f} ({report['operating_point']['fp_per_scan']:g} FP/scan)")
    print("| size | nodules | detected | contrast at the plan, HU: detected / missed | "
          "in noise SDs: detected / missed | source CT, SDs: detected / missed |")
    print("|---|---|---|---|---|---|")
    for lo, hi in BINS:
        sel = [r for r in out if lo <= r[0] < hi]
        if not sel:
            continue
        f, m = [r for r in sel if r[1]], [r for r in sel if not r[1]]
        label = f">= {lo} mm" if hi == 100 else f"{lo}-{hi} mm"
        print(f"| {label} | {len(sel)} | {len(f)} | {med(f, 2)} / {med(m, 2)} | "
              f"{med(f, 3)} / {med(m, 3)} | {med(f, 5)} / {med(m, 5)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
