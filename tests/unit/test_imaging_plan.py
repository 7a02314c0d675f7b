"""Fingerprint per site and scanner, and the preprocessing plan derived from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hounsfield.cli.main import app
from hounsfield.errors import InvalidInput
from hounsfield.imaging.fingerprint import fingerprint
from hounsfield.imaging.plan import PreprocessingPlan
from hounsfield.ingest.importer import import_paths
from tests.unit.imaging_helpers import phantom, write_series


def _two_sites(archive, tmp_path):
    a = phantom(shape=(6, 16, 16), spacing=(0.7, 0.7, 2.5), seed=1)
    b = phantom(shape=(6, 16, 16), spacing=(0.9, 0.9, 1.25), seed=2)
    b = b.with_array((b.array + 30).astype(np.int16))  # a scanner calibrated 30 HU higher
    import_paths(archive, write_series(tmp_path / "a", a, seed="a", manufacturer="Acme"), site="north")
    import_paths(archive, write_series(tmp_path / "b", b, seed="b", manufacturer="Zenith"), site="south")
    return a, b


def test_fingerprint_per_site_and_scanner(archive, tmp_path):
    a, b = _two_sites(archive, tmp_path)
    fp = fingerprint(archive)
    json.dumps(fp)  # plain JSON
    groups = {(g["site"], g["manufacturer"]): g for g in fp["groups"]}
    assert set(groups) == {("north", "Acme"), ("south", "Zenith")}
    north, south = groups[("north", "Acme")], groups[("south", "Zenith")]
    np.testing.assert_allclose(north["spacing_mm"]["median"], [0.7, 0.7, 2.5], atol=1e-4)
    np.testing.assert_allclose(south["spacing_mm"]["median"], [0.9, 0.9, 1.25], atol=1e-4)
    body_a = a.array[a.array > -500]
    assert north["intensity_body"]["mean"] == pytest.approx(float(body_a.mean()), abs=1e-6)
    assert south["intensity_body"]["mean"] - north["intensity_body"]["mean"] == pytest.approx(30, abs=3)
    assert fp["pooled"]["CT"]["n_series"] == 2
    only_north = fingerprint(archive, site="north")
    assert [g["site"] for g in only_north["groups"]] == ["north"]


def test_plan_from_fingerprint_and_apply(archive, tmp_path):
    a, _ = _two_sites(archive, tmp_path)
    fp = fingerprint(archive)
    plan = PreprocessingPlan.from_fingerprint(fp, "CT")
    assert plan.ct_clip[0] < plan.ct_clip[1] and plan.ct_std > 0
    path = tmp_path / "plan.json"
    plan.save(path)
    assert PreprocessingPlan.load(path) == plan
    out = plan.apply(a)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.spacing, plan.target_spacing, atol=1e-6)
    np.testing.assert_allclose(out.origin, a.origin)
    assert len(out.sop_instance_uids) in (0, out.shape[0])
    lo = (plan.ct_clip[0] - plan.ct_mean) / plan.ct_std
    assert out.array.min() >= lo - 1e-4
    with pytest.raises(InvalidInput, match="no MR series"):
        PreprocessingPlan.from_fingerprint(fp, "MR")


def test_mr_plan_zscores_the_body():
    v = phantom(shape=(4, 20, 20))
    v = v.with_array((v.array.astype(np.float32) + 1000) * 2)
    out = PreprocessingPlan(modality="MR").apply(v)
    body = out.array[v.array > 0.1 * np.percentile(v.array, 99)]
    assert abs(float(body.mean())) < 1e-3 and abs(float(body.std()) - 1) < 1e-3


def test_invalid_plan_is_refused(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"modality": "CT", "ct_clip": [100, -100]}')
    with pytest.raises(InvalidInput, match="ct_clip"):
        PreprocessingPlan.load(p)


def test_cli_fingerprint_plan_volume(archive, tmp_path):
    _two_sites(archive, tmp_path)
    base = ["--data-dir", str(archive.settings.data_dir), "--profile", "demo"]
    r = CliRunner().invoke(app, base + ["fingerprint", "--out", str(tmp_path / "fp.json")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, base + ["plan", str(tmp_path / "fp.json"), "--out", str(tmp_path / "plan.json")])
    assert r.exit_code == 0, r.output
    from hounsfield.archive.models import Series
    with archive.session() as s:
        uid = s.query(Series.series_instance_uid).first()[0]
    r = CliRunner().invoke(app, base + ["volume", uid, "--out", str(tmp_path / "v.nii.gz"),
                                        "--plan", str(tmp_path / "plan.json")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "v.nii.gz").stat().st_size > 0
