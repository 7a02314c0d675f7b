"""Versioned nodule datasets: patient-level stratified splits, held-out site, manifest hashes."""

from __future__ import annotations

import json

import pytest

from hounsfield.datasets.manifest import (
    check_manifest,
    create_dataset,
    list_datasets,
    open_dataset,
    summary,
)
from hounsfield.errors import InvalidInput, NotFound
from hounsfield.evaluate.froc import Nodule
from tests.nodule_helpers import make_sites, write_series


@pytest.fixture
def sites_archive(archive):
    truth = make_sites(archive, sites=("A", "B", "C"), patients_per_site=5, shape_zyx=(4, 16, 16))
    # a second series for one patient: both must land in the same split
    extra = write_series(archive, patient="A-1", site="A", nodules_mm=[], seed=999,
                         shape_zyx=(4, 16, 16))
    return archive, truth, extra


def test_splits_are_patient_level_and_stratified(sites_archive, settings) -> None:
    archive, truth, extra = sites_archive
    ds = create_dataset(archive, settings, "lung", truth, heldout_sites=["C"], seed=3)
    m = ds.manifest
    assert ds.version == 1 and len(m["series"]) == 16
    ok, why = check_manifest(m)
    assert ok, why
    by_patient: dict[str, set[str]] = {}
    for r in m["series"]:
        by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_patient.values())
    assert len(by_patient["A-1"]) == 1
    for site in ("A", "B"):
        splits = {r["split"] for r in m["series"] if r["site"] == site}
        assert splits == {"train", "validation", "test"}
    assert {r["split"] for r in m["series"] if r["site"] == "C"} == {
        "heldout-train", "heldout-validation", "heldout-test"}
    assert len(m["nodules"]) == len(truth)
    assert all(len(r["sha256"]) == 64 for r in m["series"])
    # a second creation is version 2 with the same content hash (same seed, same archive)
    ds2 = create_dataset(archive, settings, "lung", truth, heldout_sites=["C"], seed=3)
    assert ds2.version == 2 and ds2.manifest["hash"] == m["hash"]
    assert open_dataset(settings, "lung").version == 2
    assert open_dataset(settings, "lung@1").manifest["hash"] == m["hash"]
    assert [d["dataset"] for d in list_datasets(settings)] == ["lung@1", "lung@2"]
    assert summary(ds)["check"] == "ok"


def test_check_detects_patient_in_two_splits_and_edits(sites_archive, settings) -> None:
    archive, truth, _ = sites_archive
    ds = create_dataset(archive, settings, "lung", truth, seed=0)
    m = json.loads(json.dumps(ds.manifest))
    a1 = [r for r in m["series"] if r["patient"] == "A-1"]
    a1[0]["split"] = "train"
    a1[1]["split"] = "test"
    ok, why = check_manifest(m)
    assert not ok and "A-1" in why
    m2 = json.loads(json.dumps(ds.manifest))
    m2["nodules"][0]["diameter_mm"] = 99
    ok, why = check_manifest(m2)
    assert not ok and "hash" in why


def test_bad_input_has_reasons(sites_archive, settings) -> None:
    archive, truth, _ = sites_archive
    with pytest.raises(InvalidInput, match="held-out site"):
        create_dataset(archive, settings, "x", truth, heldout_sites=["Z"])
    with pytest.raises(InvalidInput, match="dataset name"):
        create_dataset(archive, settings, "../x", truth)
    with pytest.raises(InvalidInput, match="not in the archive"):
        create_dataset(archive, settings, "x", [*truth, Nodule("9.9.9", 0, 0, 0, 5)])
    with pytest.raises(NotFound):
        open_dataset(settings, "nope")
    with pytest.raises(InvalidInput, match="fractions"):
        create_dataset(archive, settings, "x", truth, fractions=(0.5, 0.5, 0.5))
