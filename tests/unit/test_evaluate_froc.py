"""LUNA16 matching / FROC / CPM: equal to monai.metrics on the same inputs, and the study report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hounsfield.evaluate.froc import CPM_FP_RATES, Detection, Nodule, cpm, curve_of, match
from hounsfield.evaluate.luna_csv import (
    read_annotations,
    read_predictions,
    write_annotations,
    write_predictions,
)
from hounsfield.evaluate.report import write_report
from hounsfield.evaluate.study import AcceptanceTargets, evaluate_detections
from hounsfield.errors import InvalidInput

monai_froc = pytest.importorskip("monai.metrics")

GRID = 48  # a 48 mm cube per scan, 1 mm voxels: voxel index == mm coordinate


def _f32(x: float) -> float:
    """Network scores are float32; MONAI keeps nodule scores in float32."""
    return float(np.float32(x))


def _random_case(seed: int):
    """Scans with non-overlapping nodules and detections on integer mm positions."""
    rng = np.random.default_rng(seed)
    scans = [f"1.2.3.{seed}.{i}" for i in range(int(rng.integers(3, 9)))]
    nodules, dets, masks = [], [], {}
    for s in scans:
        mask = np.zeros((GRID, GRID, GRID), dtype=np.int64)
        zz, yy, xx = np.indices(mask.shape)
        centres: list[tuple[np.ndarray, float]] = []
        for _ in range(int(rng.integers(0, 4))):
            for _try in range(50):
                c = rng.integers(8, GRID - 8, 3)
                d = float(rng.uniform(3, 12))
                if all(np.linalg.norm(c - c2) > (d + d2) / 2 + 1 for c2, d2 in centres):
                    centres.append((c, d))
                    break
        for label, (c, d) in enumerate(centres, start=1):
            nodules.append(Nodule(s, float(c[0]), float(c[1]), float(c[2]), d))
            inside = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 < (d / 2) ** 2
            mask[inside] = label
            for _ in range(int(rng.integers(0, 3))):  # hits, jittered inside the radius
                off = rng.integers(-1, 2, 3)
                p = c + off
                if np.sum((p - c) ** 2) < (d / 2) ** 2:
                    dets.append(Detection(s, float(p[0]), float(p[1]), float(p[2]),
                                          _f32(rng.choice([rng.random(), 0.5]))))
        for _ in range(int(rng.integers(0, 12))):  # random detections, mostly FPs
            p = rng.integers(0, GRID, 3)
            dets.append(Detection(s, float(p[0]), float(p[1]), float(p[2]),
                                  _f32(np.round(rng.random(), 2))))
        masks[s] = mask
    return scans, nodules, dets, masks


@pytest.mark.parametrize("seed", range(12))
def test_equals_monai_froc(seed: int) -> None:
    scans, nodules, dets, masks = _random_case(seed)
    # MONAI: per scan, evaluation mask + detection voxel coordinates (z, y, x order of the mask)
    fp_all, tp_all, targets = [], [], 0
    for s in scans:
        d = [x for x in dets if x.scan == s]
        probs = np.array([x.probability for x in d], dtype=np.float64)
        coords = np.array([(int(x.z), int(x.y), int(x.x)) for x in d], dtype=np.int64).reshape(-1, 3)
        fp, tp, n = monai_froc.compute_fp_tp_probs_nd(probs, coords, masks[s])
        fp_all.append(np.asarray(fp, dtype=np.float64))
        tp_all.append(np.asarray(tp, dtype=np.float64))
        targets += n
    fp_m, tp_m = np.concatenate(fp_all), np.concatenate(tp_all)
    if targets == 0:
        pytest.skip("no nodules drawn for this seed")
    fps_m, sens_m = monai_froc.compute_froc_curve_data(fp_m, tp_m, targets, len(scans))
    score_m = monai_froc.compute_froc_score(fps_m, sens_m, CPM_FP_RATES)

    m = match(scans, nodules, dets)
    assert m.num_nodules == targets
    np.testing.assert_array_equal(np.sort(m.fp_probs), np.sort(fp_m))
    np.testing.assert_array_equal(np.sort(m.nodule_scores), np.sort(tp_m))
    fps, sens, _thr = curve_of(m)
    np.testing.assert_allclose(fps, fps_m, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sens, sens_m, rtol=0, atol=1e-12)
    assert cpm(fps, sens) == pytest.approx(float(score_m), abs=1e-12)
    # the study report carries the same CPM
    rep = evaluate_detections(scans, nodules, dets, bootstrap=20)
    assert rep["cpm"] == pytest.approx(float(score_m), abs=1e-12)


def test_luna16_rules_and_operating_point() -> None:
    scans = ["a", "b", "c"]
    nodules = [Nodule("a", 0, 0, 0, 10.0, site="s1", nodule_type="solid"),
               Nodule("a", 30, 0, 0, 4.0, site="s1"),
               Nodule("b", 0, 0, 0, 20.0, site="s2", nodule_type="ground-glass")]
    dets = [
        Detection("a", 1, 1, 1, 0.9),    # hits nodule 1
        Detection("a", 0, 0, 4.9, 0.3),  # second hit of nodule 1: neither TP nor FP
        Detection("a", 0, 0, 5.0, 0.8),  # exactly on the radius: outside -> FP
        Detection("b", 9, 0, 0, 0.7),    # hits nodule 3
        Detection("c", 0, 0, 0, 0.2),    # FP on a scan without nodules
        Detection("zz", 0, 0, 0, 0.99),  # scan not evaluated: ignored
    ]
    m = match(scans, nodules, dets)
    assert m.nodule_scores.tolist() == [0.9, 0.0, 0.7]
    assert sorted(m.fp_probs.tolist()) == [0.2, 0.8]
    rep = evaluate_detections(scans, nodules, dets, bootstrap=50,
                              scan_sites={"c": "s2"},
                              targets=AcceptanceTargets(operating_fp_per_scan=0.4))
    op = rep["operating_point"]
    # budget 0.4 FP/scan over 3 scans allows 1 FP: the lowest scoring threshold dropping FP 0.2
    # is the nodule score 0.7
    assert op["false_positives"] == 1 and op["threshold"] == pytest.approx(0.7)
    assert op["detected"] == 2 and op["fn_per_100"] == pytest.approx(100 / 3)
    assert op["per_scan_sensitivity"] == 1.0 and op["per_scan_specificity"] == 1.0
    assert rep["passed"] is False
    names = {c["name"]: c["passed"] for c in rep["checks"]}
    assert names["FP per scan at operating point"] is True
    assert names["detection rate at operating point"] is False
    sites = {r["group"]: r for r in rep["by_site"]}
    assert sites["s1"]["nodules"] == 2 and sites["s2"]["scans"] == 2
    types = {r["group"]: r["detected"] for r in rep["by_type"]}
    assert types == {"ground-glass": 1, "solid": 1, "unspecified": 0}
    lo, hi = rep["cpm_ci95"]
    assert lo <= rep["cpm"] <= hi


def test_excluded_findings_are_ignored() -> None:
    nod = [Nodule("a", 0, 0, 0, 6.0)]
    exc = [Nodule("a", 20, 0, 0, 8.0)]
    dets = [Detection("a", 0, 0, 0, 0.9), Detection("a", 21, 0, 0, 0.95)]
    m = match(["a"], nod, dets, exc)
    assert m.fp_probs.size == 0 and m.ignored == 1


def test_csv_round_trip_and_reasons(tmp_path) -> None:
    nod = [Nodule("1.2", 1.5, -2.25, 30.0, 6.5, site="x", nodule_type="solid")]
    det = [Detection("1.2", 1.0, -2.0, 30.0, 0.75, 6.0)]
    write_annotations(tmp_path / "a.csv", nod)
    write_predictions(tmp_path / "p.csv", det)
    assert read_annotations(tmp_path / "a.csv") == nod
    assert read_predictions(tmp_path / "p.csv") == det
    (tmp_path / "bad.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n1.2,a,0,0,1\n")
    with pytest.raises(InvalidInput, match=r"bad.csv:2: column coordX"):
        read_predictions(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("seriesuid,x\n")
    with pytest.raises(InvalidInput, match="missing column"):
        read_annotations(tmp_path / "cols.csv")


def test_report_files(tmp_path) -> None:
    scans, nodules, dets, _ = _random_case(3)
    rep = evaluate_detections(scans, nodules, dets, bootstrap=30)
    jp, hp = write_report(rep, tmp_path, title="t", context={"model": "m@1"})
    data = json.loads(jp.read_text())
    assert data["cpm"] == rep["cpm"] and "checks" in data
    page = hp.read_text()
    assert "<svg" in page and ("PASS" in page or "FAIL" in page) and "Per site" in page


def test_evaluate_cli_on_csvs(tmp_path) -> None:
    from typer.testing import CliRunner

    from hounsfield.cli.main import app

    nod = [Nodule("s1", 0, 0, 0, 8, site="A"), Nodule("s2", 10, 10, 10, 6, site="B")]
    det = [Detection("s1", 1, 0, 0, 0.9), Detection("s2", 10, 11, 10, 0.35),
           Detection("s2", 40, 0, 0, 0.4), Detection("s3", 0, 0, 0, 0.2)]
    write_annotations(tmp_path / "a.csv", nod)
    write_predictions(tmp_path / "p.csv", det)
    (tmp_path / "scans.csv").write_text("seriesuid,site\ns1,A\ns2,B\ns3,B\n")
    base = ["--data-dir", str(tmp_path / "var"), "evaluate", "--predictions", str(tmp_path / "p.csv"),
            "--annotations", str(tmp_path / "a.csv"), "--scans", str(tmp_path / "scans.csv"),
            "--bootstrap", "20"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "r1")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert rep["scans"] == 3 and rep["operating_point"]["per_scan_specificity"] == 0.0
    # a stricter FP budget drops the 0.35 hit below the 0.4 FP: a target fails, exit status 1
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "r2"), "--fp-per-scan", "0.1"])
    assert res.exit_code == 1 and "FAIL" in res.output
    res = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "var"), "evaluate",
                                   "--predictions", str(tmp_path / "p.csv")])
    assert res.exit_code == 2 and "--annotations" in res.output


def test_stage1_breakdown_tells_unproposed_nodules_from_low_ranked_ones(tmp_path) -> None:
    """With a two-stage detector's candidates, every breakdown row counts the nodules a
    candidate lies on; the HTML report shows the column and the stage-1 recall."""
    from hounsfield.evaluate.report import write_report

    scans = ["a", "b"]
    nodules = [Nodule("a", 0, 0, 0, 10.0, site="s1"),      # detected
               Nodule("a", 40, 0, 0, 4.0, site="s1"),      # candidate on it, ranked too low
               Nodule("b", 0, 40, 0, 4.0, site="s2")]      # no candidate within 2 mm
    dets = [Detection("a", 1, 0, 0, 0.9), Detection("a", 40.5, 0, 0, 0.05),
            Detection("a", 90, 0, 0, 0.5), Detection("b", 90, 90, 0, 0.6),
            *(Detection("b", 90, 90, z, 0.4) for z in (20, 40, 60))]  # 5 FPs above 0.05
    cands = {"a": np.array([[1.0, 0, 0], [40.5, 0, 0], [90, 0, 0]]),
             "b": np.array([[0.0, 42.5, 0], [90, 90, 0]])}  # 2.5 mm off: outside the radius
    rep = evaluate_detections(scans, nodules, dets, bootstrap=10, candidates=cands)
    assert rep["stage1_recall"] == pytest.approx(2 / 3)
    small = next(r for r in rep["by_size"] if r["group"] == "<6 mm")
    assert (small["nodules"], small["stage1_hits"], small["detected"]) == (2, 1, 0)
    by_site = {r["group"]: r["stage1_hits"] for r in rep["by_site"]}
    assert by_site == {"s1": 2, "s2": 0}
    _jp, hp = write_report(rep, tmp_path, title="t")
    text = hp.read_text()
    assert "stage-1 candidate on it" in text and "66.7%" in text
    # without candidates (a one-stage detector, a predictions CSV) the report is unchanged
    plain = evaluate_detections(scans, nodules, dets, bootstrap=10)
    assert "stage1_recall" not in plain and "stage1_hits" not in plain["by_size"][0]
