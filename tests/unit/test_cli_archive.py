"""The archive CLI end to end: import, studies, show, export (folder and zip), check --repair."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from hounsfield.cli.main import app
from tests.helpers import corpus

runner = CliRunner()


def run(data: Path, *args: str):
    res = runner.invoke(app, ["--data-dir", str(data), *args], env={"COLUMNS": "250"})
    return res


def test_import_studies_show_export_check(tmp_path):
    data = tmp_path / "var"
    ct = corpus("CT_small.dcm")
    mr = corpus("MR_small.dcm")
    r = run(data, "import", str(ct), str(mr), str(tmp_path / "missing.dcm"))
    assert r.exit_code == 0, r.output
    assert "imported" in r.output and "no such file" in r.output
    study = pydicom.dcmread(ct).StudyInstanceUID
    r = run(data, "studies", "--modality", "CT")
    assert study in r.output and "CompressedSamples^CT1" in r.output
    assert pydicom.dcmread(mr).StudyInstanceUID not in r.output
    r = run(data, "show", study)
    assert r.exit_code == 0 and pydicom.dcmread(ct).SOPInstanceUID in r.output
    assert run(data, "show", "1.2.3.4").exit_code == 2
    out = tmp_path / "out"
    assert run(data, "export", study, str(out)).exit_code == 0
    files = list(out.rglob("*.dcm"))
    assert len(files) == 1 and files[0].read_bytes() == ct.read_bytes()
    zpath = tmp_path / "x.zip"
    assert run(data, "export", study, str(zpath)).exit_code == 0
    with zipfile.ZipFile(zpath) as zf:
        (name,) = zf.namelist()
        assert zf.read(name) == ct.read_bytes()
    assert run(data, "export", "9.9.9", str(out)).exit_code == 2
    r = run(data, "audit")
    assert r.exit_code == 0, r.output
    assert r.output.count("EXPORT") == 3, r.output  # two exports and the failed one

    assert "archive is consistent" in run(data, "check").output
    # damage: an orphan blob and a missing blob
    blobs = data / "blobs"
    victim = next(p for p in blobs.rglob("*.dcm"))
    os.unlink(victim)
    (blobs / "ab").mkdir(exist_ok=True)
    (blobs / "ab" / "orphan.dcm").write_bytes(b"x")
    r = run(data, "check")
    assert r.exit_code == 1 and "1 rows without blob" in r.output and "1 blobs without row" in r.output
    r = run(data, "check", "--repair")
    assert r.exit_code == 0 and "repaired" in r.output
    r = run(data, "check")
    assert r.exit_code == 0 and "archive is consistent" in r.output
    assert "1 indexed instances, 1 blobs" in r.output


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "h.toml"
    cfg.write_text('profile = "production"\nsecret_key = "changeme"\n')
    r = runner.invoke(app, ["--config", str(cfg), "--data-dir", str(tmp_path), "studies"])
    assert r.exit_code == 2 and "placeholder" in r.output
