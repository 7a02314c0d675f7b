"""Evaluate a nodule detector like a clinical study: FROC/CPM, operating point, breakdowns, CIs.

The study report answers what a reader of a LUNA16-style paper and a hospital's AI committee
ask: CPM and sensitivity at 1 FP/scan (with bootstrap 95% confidence intervals over scans, as
the LUNA16 evaluation script does), the operating point (score threshold allowed by a stated
FP/scan budget) with its lesion-level sensitivity, false-negative rate and per-scan
sensitivity/specificity, the same numbers per site, per nodule size and per nodule type, and
pass/fail against configurable acceptance targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hounsfield.evaluate.froc import (
    CPM_FP_RATES,
    Detection,
    Matching,
    Nodule,
    cpm,
    curve_of,
    froc_curve,
    match,
    operating_threshold,
    sensitivity_at,
)

SIZE_BINS_MM: tuple[float, ...] = (6.0, 8.0, 15.0)  # Lung-RADS solid-nodule size categories


class AcceptanceTargets(BaseModel):
    """What a model must reach to pass; every report states pass/fail against these."""

    model_config = ConfigDict(extra="forbid")

    operating_fp_per_scan: float = Field(default=1.0, gt=0, description="FP/scan budget")
    min_detection_rate: float = Field(default=0.95, ge=0, le=1,
                                      description="lesion-level sensitivity at the operating point")
    max_fn_per_100: float = Field(default=1.0, ge=0,
                                  description="missed nodules per 100 at the operating point")
    min_cpm: float | None = Field(default=None, ge=0, le=1)


def _subset(m: Matching, keep_scans: np.ndarray) -> Matching:
    """The matching restricted to the scans whose index is in ``keep_scans`` (bool mask)."""
    nod_keep = keep_scans[m.nodule_scan]
    fp_keep = keep_scans[m.fp_scan]
    remap = np.cumsum(keep_scans) - 1
    return Matching(
        scans=[s for s, k in zip(m.scans, keep_scans) if k],
        nodules=[n for n, k in zip(m.nodules, nod_keep) if k],
        nodule_scores=m.nodule_scores[nod_keep],
        nodule_hit=m.nodule_hit[nod_keep],
        fp_probs=m.fp_probs[fp_keep],
        fp_scan=remap[m.fp_scan[fp_keep]],
        nodule_scan=remap[m.nodule_scan[nod_keep]],
        detection_count=m.detection_count,
        scan_max=m.scan_max[keep_scans],
        ignored=m.ignored,
    )


def _weighted_cpm(m: Matching, w: np.ndarray, rates: Sequence[float]) -> tuple[float, np.ndarray]:
    """CPM of a bootstrap resample in which scan ``i`` appears ``w[i]`` times.

    Equal to :func:`froc.cpm` on the data with each scan duplicated ``w[i]`` times.
    """
    fpw = w[m.fp_scan].astype(np.float64)
    tpw = w[m.nodule_scan].astype(np.float64)
    fp_p, tp_p = m.fp_probs[fpw > 0], m.nodule_scores[tpw > 0]
    fpw, tpw = fpw[fpw > 0], tpw[tpw > 0]
    o = np.argsort(fp_p)
    fp_p, fpw = fp_p[o], fpw[o]
    o = np.argsort(tp_p)
    tp_p, tpw = tp_p[o], tpw[o]
    thr = np.unique(np.concatenate([fp_p, tp_p]))[1:]
    cfp = np.concatenate([[0.0], np.cumsum(fpw)])
    ctp = np.concatenate([[0.0], np.cumsum(tpw)])
    n_fp = cfp[-1] - cfp[np.searchsorted(fp_p, thr, side="left")]
    n_tp = ctp[-1] - ctp[np.searchsorted(tp_p, thr, side="left")]
    n_img = float(w.sum())
    targets = float(tpw.sum())
    fps = np.append(n_fp, 0) / n_img
    sens = np.append(n_tp, 0) / targets if targets else np.zeros(fps.size)
    at = sensitivity_at(fps, sens, rates)
    return float(at.mean()), at


def _ci(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _rate(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _operating(m: Matching, thr: float, scan_positive: np.ndarray) -> dict[str, Any]:
    detected = m.nodule_hit & (m.nodule_scores >= thr)
    n_fp = int((m.fp_probs >= thr).sum())
    flagged = m.scan_max >= thr
    pos = scan_positive
    return {
        "threshold": None if not np.isfinite(thr) else float(thr),
        "nodules": m.num_nodules,
        "detected": int(detected.sum()),
        "sensitivity": _rate(detected.sum(), m.num_nodules),
        "false_negatives": int(m.num_nodules - detected.sum()),
        "fn_per_100": (float(100.0 * (m.num_nodules - detected.sum()) / m.num_nodules)
                       if m.num_nodules else None),
        "false_positives": n_fp,
        "fp_per_scan": n_fp / m.num_scans if m.num_scans else None,
        "scans": m.num_scans,
        "scans_with_nodules": int(pos.sum()),
        "per_scan_sensitivity": _rate((flagged & pos).sum(), pos.sum()),
        "per_scan_specificity": _rate((~flagged & ~pos).sum(), (~pos).sum()),
    }


def _group_rows(m: Matching, thr: float, groups: Mapping[str, np.ndarray],
                scan_groups: Mapping[str, np.ndarray] | None,
                stage1: np.ndarray | None = None) -> list[dict[str, Any]]:
    rows = []
    for name, nod_mask in groups.items():
        detected = m.nodule_hit & (m.nodule_scores >= thr) & nod_mask
        row: dict[str, Any] = {
            "group": name,
            "nodules": int(nod_mask.sum()),
            "detected": int(detected.sum()),
            "sensitivity": _rate(detected.sum(), nod_mask.sum()),
        }
        if stage1 is not None:
            row["stage1_hits"] = int((stage1 & nod_mask).sum())
        if scan_groups is not None and name in scan_groups:
            sub = _subset(m, scan_groups[name])
            row["scans"] = sub.num_scans
            if sub.num_scans and sub.num_nodules:
                fps, sens, _ = curve_of(sub)
                row["cpm"] = cpm(fps, sens)
                row["sensitivity_at_1fp"] = float(sensitivity_at(fps, sens, [1.0])[0])
            op = _operating(sub, thr, np.bincount(sub.nodule_scan, minlength=sub.num_scans) > 0)
            row["fp_per_scan"] = op["fp_per_scan"]
            row["per_scan_specificity"] = op["per_scan_specificity"]
        rows.append(row)
    return rows


def _stage1_hits(m: Matching, candidates: Mapping[str, Any]) -> np.ndarray:
    """Per nodule of ``m``: does a stage-1 candidate hit it (:func:`match`'s LUNA16 rule)?"""
    cands = [Detection(scan, float(x), float(y), float(z), 0.0)
             for scan in m.scans for x, y, z in candidates.get(scan, ())]
    return match(m.scans, m.nodules, cands).nodule_hit


def size_label(d: float, bins: Sequence[float] = SIZE_BINS_MM) -> str:
    edges = [0.0, *bins, float("inf")]
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= d < hi:
            return f"<{hi:g} mm" if lo == 0 else (f">={lo:g} mm" if hi == float("inf")
                                                   else f"{lo:g}-{hi:g} mm")
    return "unknown"


def evaluate_detections(
    scans: Sequence[str],
    nodules: Sequence[Nodule],
    detections: Sequence[Detection],
    *,
    excluded: Sequence[Nodule] = (),
    scan_sites: Mapping[str, str] | None = None,
    targets: AcceptanceTargets | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    candidates: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full study report (a JSON-ready dict) for detections on ``scans``.

    ``candidates``: a two-stage detector's stage-1 candidate centres per scan (N x 3 patient
    mm); then every breakdown row also counts the nodules a candidate lies on (``stage1_hits``,
    LUNA16's hit rule), which tells a nodule stage 1 never proposed from one stage 2 ranked
    below the operating point."""
    targets = targets or AcceptanceTargets()
    m = match(scans, nodules, detections, excluded)
    if m.num_scans == 0:
        from hounsfield.errors import InvalidInput

        raise InvalidInput("no scans to evaluate")
    fps, sens, _thr = froc_curve(m.fp_probs, m.nodule_scores, m.num_nodules, m.num_scans)
    at = sensitivity_at(fps, sens, CPM_FP_RATES)
    score = float(at.mean()) if m.num_nodules else None
    thr = operating_threshold(m, targets.operating_fp_per_scan)
    scan_positive = np.bincount(m.nodule_scan, minlength=m.num_scans) > 0
    op = _operating(m, thr, scan_positive)

    # bootstrap over scans (LUNA16 evaluation script style), seeded for reproducible reports
    rng = np.random.default_rng(seed)
    boot_cpm, boot_s1, boot_op = [], [], []
    for _ in range(bootstrap if m.num_nodules else 0):
        w = np.bincount(rng.integers(0, m.num_scans, m.num_scans), minlength=m.num_scans)
        if w[m.nodule_scan].sum() == 0:
            continue
        c, a = _weighted_cpm(m, w, CPM_FP_RATES)
        boot_cpm.append(c)
        boot_s1.append(a[3])
        nw = w[m.nodule_scan]
        det = (m.nodule_hit & (m.nodule_scores >= thr)) * nw
        boot_op.append(det.sum() / nw.sum())

    stage1 = None if candidates is None else _stage1_hits(m, candidates)
    sites = dict(scan_sites or {})
    for n in m.nodules:
        if n.site and n.scan not in sites:
            sites[n.scan] = n.site
    site_names = sorted({sites.get(s, "") or "unknown" for s in m.scans})
    scan_site = np.array([sites.get(s, "") or "unknown" for s in m.scans])
    nod_site = scan_site[m.nodule_scan] if m.num_nodules else np.zeros(0, dtype=str)
    by_site = _group_rows(
        m, thr, {s: nod_site == s for s in site_names}, {s: scan_site == s for s in site_names},
        stage1)
    sizes = [size_label(n.diameter_mm) for n in m.nodules]
    size_names = [size_label(b - 1e-9) for b in SIZE_BINS_MM] + [size_label(1e9)]
    by_size = _group_rows(m, thr, {s: np.array([x == s for x in sizes], dtype=bool)
                                   for s in size_names}, None, stage1)
    types = [n.nodule_type or "unspecified" for n in m.nodules]
    by_type = _group_rows(m, thr, {t: np.array([x == t for x in types], dtype=bool)
                                   for t in sorted(set(types))}, None, stage1)

    checks = [
        _check("detection rate at operating point", ">=", targets.min_detection_rate,
               op["sensitivity"]),
        _check("false negatives per 100 nodules at operating point", "<=",
               targets.max_fn_per_100, op["fn_per_100"]),
        _check("FP per scan at operating point", "<=", targets.operating_fp_per_scan,
               op["fp_per_scan"]),
    ]
    if targets.min_cpm is not None:
        checks.append(_check("CPM", ">=", targets.min_cpm, score))
    return {
        "scans": m.num_scans,
        "nodules": m.num_nodules,
        "detections": m.detection_count,
        "ignored_detections": m.ignored,
        "cpm": score,
        "cpm_ci95": _ci(np.array(boot_cpm)),
        "sensitivity_at": {f"{r:g}": float(v) for r, v in zip(CPM_FP_RATES, at)},
        "sensitivity_at_1fp": float(at[3]) if m.num_nodules else None,
        "sensitivity_at_1fp_ci95": _ci(np.array(boot_s1)),
        "operating_point": {**op, "fp_per_scan_target": targets.operating_fp_per_scan,
                            "sensitivity_ci95": _ci(np.array(boot_op))},
        "by_site": by_site,
        "by_size": by_size,
        "by_type": by_type,
        **({} if stage1 is None else {"stage1_recall": _rate(stage1.sum(), m.num_nodules)}),
        "froc": {"fp_per_scan": fps[::-1].tolist(), "sensitivity": sens[::-1].tolist()},
        "bootstrap": {"resamples": len(boot_cpm), "seed": seed, "unit": "scan"},
        "targets": targets.model_dump(),
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }


def _check(name: str, op: str, target: float, value: float | None) -> dict[str, Any]:
    if value is None:
        ok = False
    else:
        ok = value >= target - 1e-12 if op == ">=" else value <= target + 1e-12
    return {"name": name, "op": op, "target": target, "value": value, "passed": bool(ok)}
