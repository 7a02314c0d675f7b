"""The AI platform's core loop through the CLI: dataset -> train (tiny) -> registry -> infer ->
evaluate -> fine-tune with comparison -> export/import.  Real MLflow (SQLite backend), real
Lightning, real MONAI network; only the model is tiny and trains for a few steps (mechanics)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hounsfield.cli.main import app
from hounsfield.evaluate.luna_csv import write_annotations
from tests.nodule_helpers import make_sites, write_zoo_retinanet_bundle

pytestmark = pytest.mark.slow


def run(args, data_dir, code=0):
    res = CliRunner().invoke(app, ["--data-dir", str(data_dir), "--profile", "demo", *args])
    if res.exit_code != code:
        raise AssertionError(f"{args}: exit {res.exit_code}\n{res.output}\n{res.exception!r}")
    return res.output


def test_train_register_infer_evaluate_finetune(archive, settings, tmp_path) -> None:
    data = settings.data_dir
    truth = make_sites(archive, sites=("A", "B", "C"), patients_per_site=4)
    write_annotations(tmp_path / "truth.csv", truth)
    out = run(["dataset", "create", "nod", "--truth", str(tmp_path / "truth.csv"),
               "--heldout-site", "C"], data)
    assert "nod@1" in out and "check: ok" in out
    assert "nod@1" in run(["dataset", "list"], data)

    out = run(["train", "lung-nodule-detection", "--dataset", "nod", "--preset", "tiny",
               "--name", "nodules", "--bootstrap", "20"], data)
    assert "registered nodules@1" in out

    out = run(["models", "list"], data)
    assert "nodules@1" in out and "nod@1" in out
    out = run(["models", "show", "nodules@1"], data)
    assert "dataset_hash" in out and "code_version" in out and "report.html" in out

    series = truth[0].scan
    res = json.loads(run(["infer", "nodules@1", series, "--json", "--precision", "bf16"], data))
    assert res["series_instance_uid"] == series
    assert res["provenance"]["model"] == "nodules" and res["provenance"]["model_version"] == "1"
    assert all({"x_mm", "y_mm", "z_mm", "diameter_mm", "probability"} <= set(f)
               for f in res["findings"])
    assert res["provenance"]["tta_top_k"] == 0  # the tiny preset's setting
    # test-time augmentation: the top candidates re-scored over 8 flips; same candidates
    tta = json.loads(run(["infer", "nodules@1", series, "--json", "--tta", "20"], data))
    assert tta["provenance"]["tta_top_k"] == 20
    assert tta["provenance"]["candidates"] == res["provenance"]["candidates"]
    assert "--tta -1" in run(["infer", "nodules@1", series, "--tta", "-1"], data, code=2)

    rep_dir = tmp_path / "eval"
    out = CliRunner().invoke(app, ["--data-dir", str(data), "--profile", "demo", "evaluate",
                                   "nodules@1", "--dataset", "nod", "--split", "heldout-test",
                                   "--out", str(rep_dir), "--bootstrap", "20"])
    assert out.exit_code in (0, 1), out.output  # 1 = the model failed its targets
    rep = json.loads((rep_dir / "report.json").read_text())
    assert ("PASS" in out.output) and (rep["passed"] == (out.exit_code == 0))
    assert (rep_dir / "report.html").is_file() and (rep_dir / "predictions.csv").is_file()

    out = run(["train", "lung-nodule-detection", "--base", "nodules@1", "--dataset", "nod",
               "--preset", "tiny", "--name", "nodules", "--bootstrap", "20"], data)
    assert "registered nodules@2" in out and "comparison" in out
    out = run(["models", "show", "nodules@2"], data)
    assert "base_model" in out and "nodules@1" in out and "heldout-train" in out

    exp = tmp_path / "exported"
    run(["models", "export", "nodules@2", str(exp)], data)
    assert (exp / "configs" / "metadata.json").is_file() and (exp / "models" / "model.pt").is_file()
    assert list((exp / "docs" / "evaluation").glob("*comparison/report.html"))
    assert "imported@1" in run(["models", "import", str(exp), "--name", "imported"], data)
    res2 = json.loads(run(["infer", "imported@1", series, "--json"], data))
    assert res2["provenance"]["model"] == "imported"

    # a MONAI model-zoo RetinaNet bundle (lung_nodule_ct_detection layout; random weights)
    # registers, runs through `infer` and is scored by `evaluate` like our own models
    zoo = write_zoo_retinanet_bundle(tmp_path / "lung_nodule_ct_detection")
    out = run(["models", "import", str(zoo)], data)
    assert "lung_nodule_ct_detection@1" in out and "resnet10 FPN at 1.5 x 1.5 x 2 mm" in out
    res3 = json.loads(run(["infer", "lung_nodule_ct_detection", series, "--json"], data))
    assert res3["provenance"]["detector"] == "monai-zoo RetinaNet (resnet10 FPN)"
    assert res3["provenance"]["model_version"] == "1" and len(res3["findings"]) == 300
    assert "this one is a MONAI zoo RetinaNet" in " ".join(run(
        ["infer", "lung_nodule_ct_detection", series, "--tta", "5"], data, code=2).split())
    out = run(["train", "lung-nodule-detection", "--base", "lung_nodule_ct_detection@1",
               "--dataset", "nod", "--preset", "tiny"], data, code=2)
    assert "fine-tuning (--base) start from Hounsfield's own bundles only" in " ".join(out.split())
    zoo_eval = tmp_path / "zoo-eval"
    out = CliRunner().invoke(app, ["--data-dir", str(data), "--profile", "demo", "evaluate",
                                   "lung_nodule_ct_detection@1", "--dataset", "nod", "--split",
                                   "heldout-test", "--out", str(zoo_eval), "--bootstrap", "20"])
    assert out.exit_code in (0, 1), out.output
    rep = json.loads((zoo_eval / "report.json").read_text())
    assert rep["scans"] > 0 and "cpm" in rep and "stage1_recall" not in rep

    # a zoo bundle Hounsfield cannot run (no inference.json) registers; infer says why
    other = tmp_path / "other_bundle"
    (other / "configs").mkdir(parents=True)
    (other / "models").mkdir()
    (other / "configs" / "metadata.json").write_text(json.dumps(
        {"name": "other_bundle", "version": "0.1.0", "monai_version": "1.4.0"}))
    (other / "models" / "model.pt").write_bytes(b"not loaded")
    assert "not runnable here" in run(["models", "import", str(other)], data)
    out = run(["infer", "other_bundle", series], data, code=2)
    assert "configs/inference.json" in out.replace("\n", "")
    run(["infer", "nodules@9", series], data, code=2)
