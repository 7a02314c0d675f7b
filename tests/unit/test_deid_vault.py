"""De-identifying from the archive into a folder or the archive; the encrypted pseudonym vault;
admin-only, audited re-identification; burned-in annotation flagging and pixel blanking."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from hounsfield.cli.main import app
from hounsfield.config import load_settings
from hounsfield.deid.engine import Deidentifier
from hounsfield.deid.models import Pseudonym, Reidentification
from hounsfield.deid.pixels import PixelRegionRule, burned_in_reason
from hounsfield.deid.service import deidentify_uids
from hounsfield.deid.vault import Actor, Vault
from hounsfield.errors import ConfigurationError, NotFound, PermissionDenied
from hounsfield.ingest.importer import import_paths
from tests.helpers import corpus
from tests.unit.imaging_helpers import phantom, write_series

warnings.filterwarnings("ignore", category=UserWarning)
ADMIN = Actor("alice", frozenset({"admin"}), client="127.0.0.1")
RESEARCHER = Actor("bob", frozenset({"researcher"}), client="127.0.0.1")


@pytest.fixture
def ct_study(archive, tmp_path):
    paths = write_series(tmp_path / "in", phantom(shape=(4, 10, 10)), patient="DOE^JANE", seed="study1",
                         study_date="20230415")
    assert import_paths(archive, paths).imported == 4
    ds = pydicom.dcmread(paths[0])
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), paths


def test_deid_study_into_folder_is_clean_and_valid(archive, ct_study, tmp_path):
    study, _, _ = ct_study
    out = tmp_path / "out"
    rep = deidentify_uids(archive, [study], out_dir=out)
    assert rep.written == 4 and not rep.failed and not rep.withheld
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 4
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.PatientName != "DOE^JANE" and ds.PatientID.startswith("HF-")
        assert ds.StudyInstanceUID == rep.studies[study] != study
        assert b"DOE" not in f.read_bytes() and b"20230415" not in f.read_bytes()
    if shutil.which("dciodvfy"):
        res = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True)
        assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error")] == []


def test_deid_into_archive_and_vault_reidentification(archive, ct_study):
    study, series, _ = ct_study
    rep = deidentify_uids(archive, [series])
    assert rep.written == 4
    from hounsfield.archive.query import instances_of
    with archive.session() as s:
        assert len(instances_of(s, rep.studies[study])) == 4
        rows = list(s.scalars(select(Pseudonym)))
    assert {r.kind for r in rows} == {"patient", "study", "series"}
    for r in rows:  # encrypted at rest
        assert "DOE" not in r.original_encrypted and study not in r.original_encrypted
    pseudo = next(r.pseudonym for r in rows if r.kind == "patient")
    vault = Vault(archive)
    with pytest.raises(PermissionDenied):
        vault.reidentify(pseudo, RESEARCHER)
    assert vault.reidentify(pseudo, ADMIN, reason="incidental finding")["PatientName"] == "DOE^JANE"
    assert vault.reidentify(rep.studies[study], ADMIN, kind="study")["StudyInstanceUID"] == study
    with pytest.raises(NotFound):
        vault.reidentify("HF-0000000000000000", ADMIN)
    log = [(r.actor, r.outcome, r.kind) for r in vault.audit_log()]
    assert ("bob", "denied", "patient") in log and ("alice", "granted", "patient") in log
    assert ("alice", "not-found", "patient") in log
    # same input, second run: same pseudonymous UIDs (idempotent; the archive sees duplicates)
    again = deidentify_uids(archive, [series])
    assert again.studies == rep.studies


def test_vault_key_is_required_outside_demo_and_must_match(tmp_path, archive, ct_study):
    deidentify_uids(archive, [ct_study[0]])
    s = load_settings(data_dir=archive.settings.data_dir, profile="production", secret_key="x" * 32)
    from hounsfield.archive import Archive
    prod = Archive.open(s)
    try:
        with pytest.raises(ConfigurationError, match="vault_key"):
            Vault(prod)
        wrong = Archive.open(load_settings(data_dir=archive.settings.data_dir, profile="production",
                                           secret_key="x" * 32, deid={"vault_key": "another-long-secret"}))
        with archive.session() as ses:
            pseudo = ses.scalar(select(Pseudonym.pseudonym).where(Pseudonym.kind == "patient"))
        with pytest.raises(ConfigurationError, match="does not decrypt"):
            Vault(wrong).reidentify(pseudo, ADMIN)
        wrong.close()
    finally:
        prod.close()


def test_burned_in_flagging():
    us = pydicom.dcmread(corpus("US1_UNCR.dcm"))
    assert "US" in burned_in_reason(us)
    ct = pydicom.dcmread(corpus("CT_small.dcm"))
    assert burned_in_reason(ct) == ""
    ct.BurnedInAnnotation = "YES"
    assert burned_in_reason(ct) == "BurnedInAnnotation is YES"
    cr = pydicom.dcmread(corpus("CT_small.dcm"))
    cr.Modality = "CR"
    assert burned_in_reason(cr)
    cr.BurnedInAnnotation = "NO"
    assert burned_in_reason(cr) == ""


def test_flagged_images_are_withheld_unless_cleaned(archive, tmp_path):
    assert import_paths(archive, [corpus("US1_UNCR.dcm")]).imported == 1
    sop = str(pydicom.dcmread(corpus("US1_UNCR.dcm")).SOPInstanceUID)
    rep = deidentify_uids(archive, [sop], out_dir=tmp_path / "a")
    assert rep.written == 0 and "burned-in" in rep.withheld[0][1]
    assert not list((tmp_path / "a").rglob("*.dcm"))
    ds = pydicom.dcmread(corpus("US1_UNCR.dcm"))
    rule = PixelRegionRule(manufacturer="*", modality="US", regions=[(0, 0, ds.Columns, 40)])
    e = Deidentifier(b"k", pixel_rules=[rule])
    res = e.deidentify(ds)
    assert res.exportable and res.pixels_cleaned and ds.BurnedInAnnotation == "NO"
    px = ds.pixel_array
    assert np.all(px[:40] == 0) and np.any(px[40:] != 0)
    assert "113101" in {it.CodeValue for it in ds.DeidentificationMethodCodeSequence}


def test_cli_deid_out_verify_and_reidentify(archive, ct_study, tmp_path):
    study, _, _ = ct_study
    base = ["--data-dir", str(archive.settings.data_dir), "--profile", "demo"]
    out = tmp_path / "cli-out"
    r = CliRunner().invoke(app, base + ["deid", study, "--out", str(out), "--modified-dates"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["deid-verify", str(out), "--modified-dates"])
    assert r.exit_code == 0 and "0 leak(s)" in r.output, r.output
    r = CliRunner().invoke(app, ["deid-verify", str(ct_study[2][0])])  # an identified file
    assert r.exit_code == 1 and "PatientIdentityRemoved" in r.output
    pseudo = pydicom.dcmread(next(out.rglob("*.dcm"))).PatientID
    r = CliRunner().invoke(app, base + ["reidentify", pseudo, "--actor", "eve"])
    assert r.exit_code == 2 and "admin" in r.output
    r = CliRunner().invoke(app, base + ["reidentify", pseudo, "--actor", "alice", "--role", "admin"])
    assert r.exit_code == 0 and "DOE^JANE" in r.output
    r = CliRunner().invoke(app, base + ["deid", "1.2.3.4.999"])
    assert r.exit_code == 2 and "nothing in the archive" in r.output


def test_vault_and_audit_on_sqlite_and_postgresql(any_archive, tmp_path):
    paths = write_series(tmp_path / "in", phantom(shape=(2, 8, 8)), patient="ROE^RICHARD", seed="pg")
    assert import_paths(any_archive, paths).imported == 2
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    rep = deidentify_uids(any_archive, [study])
    assert rep.written == 2
    vault = Vault(any_archive)
    with any_archive.session() as s:
        pseudo = s.scalar(select(Pseudonym.pseudonym).where(Pseudonym.kind == "patient"))
    assert vault.reidentify(pseudo, ADMIN)["PatientID"] == "ROE"
    with pytest.raises(PermissionDenied):
        vault.reidentify(pseudo, RESEARCHER)
    with any_archive.session() as s:
        outcomes = sorted(s.scalars(select(Reidentification.outcome)))
    assert outcomes == ["denied", "granted"]


def test_deid_and_reidentification_reach_the_audit_trail(archive, ct_study):
    from hounsfield.audit.trail import query

    study = ct_study[0]
    deidentify_uids(archive, [study], actor="carol")
    with archive.session() as s:
        pseudo = s.scalar(select(Pseudonym.pseudonym).where(Pseudonym.kind == "patient"))
    with pytest.raises(PermissionDenied):
        Vault(archive).reidentify(pseudo, RESEARCHER)
    with archive.session() as s:
        events = query(s)
    actions = {(e.action, e.actor) for e in events}
    assert ("DEIDENTIFY", "carol") in actions and ("REIDENTIFY", "bob") in actions


def test_bad_pixel_region_settings_are_a_configuration_error(tmp_path):
    from hounsfield.deid.service import deidentifier_from_settings

    s = load_settings(data_dir=tmp_path, profile="demo", deid={"pixel_regions": [{"regions": "top"}]})
    with pytest.raises(ConfigurationError, match="pixel_regions"):
        deidentifier_from_settings(s)
    ok = load_settings(data_dir=tmp_path, profile="demo",
                       deid={"pixel_regions": [{"modality": "US", "regions": [[0, 0, 10, 10]]}]})
    assert deidentifier_from_settings(ok).pixel_rules[0].regions == [(0, 0, 10, 10)]
