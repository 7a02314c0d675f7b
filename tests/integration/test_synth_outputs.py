"""Synthetic studies against real peers: dciodvfy (dicom3tools), the archive's write path,
dcmtk's storescp over C-STORE, and the CLI demo."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from hounsfield.archive.models import Instance, Series, Study
from hounsfield.cli.main import app
from hounsfield.errors import InvalidInput, PeerError
from hounsfield.synth import (
    BUILTIN_SITES, generate_ct, generate_dx, iter_cases, make_seg, send_cases, synth_to_archive,
    synth_to_folder, to_part10,
)
from hounsfield.synth.output import parse_destination
from tests.helpers import free_port, wait_port

SMALL = {"shape": (12, 64, 64), "dx_matrix": 128, "detail": 0.3}


def _dciodvfy(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("site", list(BUILTIN_SITES))
def test_every_object_written_passes_dciodvfy(tmp_path, site):
    ct = generate_ct(site, 77, shape=(10, 64, 64), nodules=2)
    seg = make_seg(ct)
    dx = generate_dx(site, 77, matrix=128, nodules=2, phantom=ct.phantom)
    objects = {f"ct_{d.InstanceNumber}": d for d in ct.datasets}
    objects.update({"seg": seg, "dx": dx.dataset})
    for name, ds in objects.items():
        p = tmp_path / f"{name}.dcm"
        p.write_bytes(to_part10(ds))
        errors = _dciodvfy(p)
        assert errors == [], f"{site} {name}: {errors}"


def test_synth_to_archive_stores_every_object_with_the_site_label(any_archive):
    archive = any_archive
    report = synth_to_archive(archive, ["hanse", "lingnan"], 1, seed=3, nodules=1, **SMALL)
    assert report.cases == 2 and report.statuses == {"stored": report.instances}
    with archive.session() as s:
        studies = s.query(Study).all()
        assert {st.site for st in studies} == {"hanse", "lingnan"}
        assert len(studies) == 4  # a CT study and a radiograph study per patient
        modalities = sorted(m for (m,) in s.query(Series.modality).all())
        assert modalities == ["CT", "CT", "DX", "DX", "SEG", "SEG"]
        assert s.query(Instance).count() == report.instances == 2 * (12 + 1 + 1)
    rows = list(csv.DictReader(report.truth_csv.open(encoding="utf-8")))
    assert len(rows) == 2 and {r["site"] for r in rows} == {"hanse", "lingnan"}
    assert (archive.settings.data_dir / "synth" / "masks" / f"{rows[0]['seriesuid']}.nii.gz").exists()
    # a second run is a no-op: same seed, same bytes, duplicates
    again = synth_to_archive(archive, ["hanse"], 1, seed=3, nodules=1, **SMALL)
    assert again.statuses == {"duplicate": again.instances}


def test_folder_output_has_files_truth_and_manifest(tmp_path):
    report = synth_to_folder(tmp_path, iter_cases(["jingdong"], 2, seed=1, **SMALL))
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == report.instances
    ds = pydicom.dcmread(files[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (tmp_path / "annotations.csv").read_text(encoding="utf-8").startswith(
        "seriesuid,coordX,coordY,coordZ,diameter_mm,nodule_type")
    assert (tmp_path / "dx_truth.csv").exists() and (tmp_path / "manifest.json").exists()


class StoreSCP:
    """dcmtk's storescp on a free port, writing what it receives to a folder."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.port = free_port()
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(
            ["storescp", "--aetitle", "STORESCP", "--output-directory", str(out),
             "--accept-all", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def storescp(tmp_path):
    if shutil.which("storescp") is None:
        pytest.skip("dcmtk not installed")
    out = tmp_path / "received"
    out.mkdir()
    scp = StoreSCP(out)
    yield scp
    scp.stop()


@pytest.mark.peers
def test_send_to_storescp_at_a_rate(storescp):
    cases = list(iter_cases(["sakura"], 1, seed=5, nodules=1, **SMALL))
    report = send_cases(cases, f"STORESCP@127.0.0.1:{storescp.port}", rate=40.0)
    assert report.statuses == {"0x0000": 14}
    assert report.seconds >= 13 / 40.0  # the rate holds
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in storescp.out.iterdir()}
    sent = {ds.SOPInstanceUID: ds for ds in cases[0].datasets()}
    assert set(received) == set(sent)
    ct0 = cases[0].ct.datasets[0]
    got = pydicom.dcmread(received[ct0.SOPInstanceUID])
    assert np.array_equal(got.pixel_array, pydicom.dcmread(io.BytesIO(to_part10(ct0))).pixel_array)
    assert str(got.PatientName) == cases[0].ct.patient.name  # Japanese ISO 2022 survives


@pytest.mark.peers
def test_cli_send_and_bad_destinations(storescp):
    r = CliRunner().invoke(app, ["synth", "send", "--to", f"STORESCP@127.0.0.1:{storescp.port}",
                                 "-n", "1", "-s", "hanse", "--shape", "6x48x48", "--rate", "100"])
    assert r.exit_code == 0, r.output
    assert len(list(storescp.out.iterdir())) == 6
    for bad in ("nohost", "AE@host", "AE@host:notaport", "@host:104", "AE@host:70000"):
        with pytest.raises(InvalidInput):
            parse_destination(bad)
    with pytest.raises(PeerError):
        send_cases(iter_cases(["hanse"], 1, **SMALL), f"X@127.0.0.1:{free_port()}", timeout=3)


def test_cli_demo_builds_a_multi_site_set(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["synth", "demo", "--out", str(out), "--patients", "1"])
    assert r.exit_code == 0, r.output
    sites = {p.name for p in (out / "dicom").iterdir()}
    assert sites == set(BUILTIN_SITES)
    assert len(list(out.rglob("DX/dx.dcm"))) == 4
    assert (out / "annotations.csv").exists()


def test_cli_ct_into_the_archive(tmp_path):
    r = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "var"), "synth", "ct", "-n", "1",
                                 "-s", "lingnan", "--shape", "8x48x48", "--nodules", "1",
                                 "--archive"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "var" / "synth" / "annotations.csv").exists()
    r = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "var"), "studies"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "SYN-LINGNAN-00000" in r.output


@pytest.mark.peers
def test_a_peer_without_the_sop_class_is_reported_not_a_crash(tmp_path):
    """storescp restricted to CT (a config file): the SEG and DX cannot go; we say so."""
    if shutil.which("storescp") is None:
        pytest.skip("dcmtk not installed")
    cfg = tmp_path / "ct-only.cfg"
    cfg.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LittleEndianExplicit\n"
        "TransferSyntax2 = LittleEndianImplicit\n[[PresentationContexts]]\n[CTOnly]\n"
        "PresentationContext1 = CTImageStorage\\Uncompressed\n[[Profiles]]\n[CT]\n"
        "PresentationContexts = CTOnly\n", encoding="utf-8")
    out = tmp_path / "in"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "--config-file", str(cfg), "CT", "--output-directory",
                             str(out), str(port)], env=dict(os.environ, TCP_NODELAY="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        report = send_cases(iter_cases(["hanse"], 1, nodules=1, **SMALL), f"ANY@127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
    assert report.statuses["0x0000"] == 12
    not_sent = {k: v for k, v in report.statuses.items() if k.startswith("not sent")}
    assert sum(not_sent.values()) == 2, report.statuses
    assert len(list(out.iterdir())) == 12


def test_site_fingerprints_from_the_imaging_stage_differ(archive):
    """The same patient scanned at every built-in site, stored, then fingerprinted by
    hounsfield.imaging.fingerprint: one group per site with the site's kernel and slice
    thickness, and body-intensity statistics that differ between every pair of sites."""
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances
    from hounsfield.imaging.fingerprint import fingerprint

    for name in BUILTIN_SITES:
        ct = generate_ct(name, 20260101, shape=(24, 96, 96), nodules=0)
        store_instances(archive, [parse_part10(b) for b in ct.part10()], source="t", site=name)
    fp = fingerprint(archive)
    groups = {g["site"]: g for g in fp["groups"]}
    assert set(groups) == set(BUILTIN_SITES) and not fp["skipped"]
    for name, g in groups.items():
        site = BUILTIN_SITES[name]
        assert g["kernels"] == {site.kernel: 1}
        assert g["slice_thickness_mm"]["median"] == pytest.approx(site.slice_thickness_mm)
    keys = ("mean", "p5", "p50", "p95")
    names = sorted(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ia, ib = groups[a]["intensity_body"], groups[b]["intensity_body"]
            assert max(abs(ia[k] - ib[k]) for k in keys) > 5.0, (a, b, ia, ib)
    # the noisiest site (sharp lung kernel) has the widest body-intensity spread
    assert max(groups, key=lambda n: groups[n]["intensity_body"]["std"]) == "jingdong"
