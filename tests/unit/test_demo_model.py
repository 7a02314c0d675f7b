"""The demo nodule model shipped in src/hounsfield/demo/model/: the bundle loads, finds a known
nodule on a synthetic demo CT, and install_demo_model registers it once, with its reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hounsfield.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME, install_demo_model
from hounsfield.demo.install import DIGEST_TAG, bundle_digest, bundle_reports
from hounsfield.errors import NotFound
from hounsfield.imaging import Volume
from hounsfield.registry.mlflow_registry import ModelRegistry
from hounsfield.synth import DEMO_OPTIONS, case_seed, generate_ct

REPORT_LABELS = ("demo-v1-heldout-test", "demo-v1-test")

# A demo CT the model was not trained on (training used seeds 11 and 12): `hounsfield demo`'s
# hanse patient #1 (seed 0; DEMO_OPTIONS: 80 x 192 x 192, vessel detail 0.5), with a 26.7 mm
# solid nodule.  Chosen because the model finds it (first, p 0.98): of the 8 CTs the demo stores
# it finds the nodules of two (see the model's README); small and faint ones it misses, as its
# reports say.
CASE_SITE, CASE_INDEX = "hanse", 1


def test_bundle_layout_and_lineage():
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/hounsfield.json",
                "models/model.pt", "docs/README.md"):
        assert (DEMO_MODEL_DIR / rel).is_file(), rel
    assert (DEMO_MODEL_DIR / "models" / "model.pt").stat().st_size < 3_000_000
    hf = json.loads((DEMO_MODEL_DIR / "configs" / "hounsfield.json").read_text())
    assert hf["detector"] == "two-stage"
    lin = hf["lineage"]
    for key in ("dataset", "dataset_hash", "recipe", "recipe_hash", "code_version",
                "train_seconds", "preset"):
        assert lin.get(key) not in (None, ""), key
    assert lin["preset"] == "demo"
    reports = bundle_reports(DEMO_MODEL_DIR)
    assert sorted(reports) == sorted(REPORT_LABELS)
    for label, rep in reports.items():
        assert (DEMO_MODEL_DIR / "docs" / "evaluation" / label / "report.html").is_file()
        # the shipped reports were made against the demo preset's targets
        assert rep["targets"]["min_cpm"] == hf["recipe"]["targets"]["min_cpm"]


def test_bundle_finds_a_known_nodule_on_a_demo_ct():
    from hounsfield.infer import TwoStageRunner
    from hounsfield.infer import load_runner

    runner = load_runner(DEMO_MODEL_DIR, name=DEMO_MODEL_NAME, version="test")
    assert isinstance(runner, TwoStageRunner)
    assert sum(p.numel() for p in runner.net.parameters()) < 200_000
    ct = generate_ct(CASE_SITE, case_seed(0, CASE_SITE, CASE_INDEX), shape=DEMO_OPTIONS["shape"],
                     detail=DEMO_OPTIONS["detail"], patient_index=CASE_INDEX)
    assert ct.truth, "the chosen case must have a nodule"
    vol = Volume(ct.hu(), ct.grid.spacing, ct.grid.origin, modality="CT",
                 series_instance_uid=ct.series_uid)
    with torch.inference_mode():
        res = runner.run_volume(vol)
    assert res.findings
    big = max(ct.truth, key=lambda t: t.diameter_mm)
    assert big.diameter_mm > 20
    centre = np.array([big.coordX, big.coordY, big.coordZ])
    top = sorted(res.findings, key=lambda f: -f.probability)[:3]
    dist = [float(np.linalg.norm(np.array([f.x_mm, f.y_mm, f.z_mm]) - centre)) for f in top]
    # a LUNA16 hit: a finding's centre within the nodule's radius, among the 3 most probable
    assert min(dist) <= big.diameter_mm / 2, (dist, big.diameter_mm, top)


def test_install_is_idempotent_and_sets_evaluation_tags(settings):
    mv = install_demo_model(settings)
    assert mv.name == DEMO_MODEL_NAME
    assert mv.tags[DIGEST_TAG] == bundle_digest(DEMO_MODEL_DIR)
    assert mv.tags["origin"] == "demo"
    reports = bundle_reports(DEMO_MODEL_DIR)
    for label, rep in reports.items():
        assert mv.tags[f"eval.{label}.passed"] == str(rep["passed"])
        assert float(mv.tags[f"eval.{label}.cpm"]) == pytest.approx(rep["cpm"])
    assert mv.tags["dataset_hash"] and mv.tags["recipe_hash"]
    again = install_demo_model(settings)
    assert again.ref == mv.ref
    reg = ModelRegistry(settings)
    assert [v.ref for v in reg.versions(DEMO_MODEL_NAME)] == [mv.ref]
    assert sorted(p.parent.name for p in reg.reports(mv)) == sorted(REPORT_LABELS)
    # the registered bundle runs from the registry
    from hounsfield.infer import load_runner

    assert load_runner(reg.bundle_path(again)).patch == tuple(json.loads(
        (DEMO_MODEL_DIR / "configs" / "hounsfield.json").read_text())["patch"])


def test_install_completes_an_interrupted_one(settings):
    # a version registered for this bundle whose reports were never attached (the process
    # died in between): the next install attaches them instead of registering a second one
    reg = ModelRegistry(settings)
    first = reg.import_bundle(DEMO_MODEL_DIR, DEMO_MODEL_NAME,
                              tags={DIGEST_TAG: bundle_digest(DEMO_MODEL_DIR)})
    assert not any(k.startswith("eval.") for k in first.tags)
    mv = install_demo_model(settings)
    assert mv.ref == first.ref
    assert all(f"eval.{label}.passed" in mv.tags for label in REPORT_LABELS)


def test_install_refuses_a_missing_bundle(settings, tmp_path):
    with pytest.raises(NotFound, match="demo model bundle is missing"):
        install_demo_model(settings, bundle=tmp_path / "nowhere")
