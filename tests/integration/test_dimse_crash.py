"""kill -9 of ``hounsfield serve`` during a 1,000-instance storescu: every instance storescu saw
acknowledged is in the archive after the restart, and ``hounsfield check`` is clean."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pydicom
import pytest
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.archive.models import Instance
from hounsfield.config import load_settings
from tests.dimse_peers import PEER_ENV, ROOT, HounsfieldServer, have, make_ct_series

pytestmark = [pytest.mark.peers, pytest.mark.slow,
              pytest.mark.skipif(not have("storescu"), reason="dcmtk not installed")]


def test_kill9_during_storescu_loses_nothing_acknowledged(tmp_path):
    files = make_ct_series(tmp_path / "ct", 1000, size=256)  # large enough to still be sending at the kill
    data = tmp_path / "var"
    server = HounsfieldServer(data).start()
    lst = tmp_path / "files.txt"
    proc = subprocess.Popen(["storescu", "-v", "-aec", "HOUNSFIELD", "127.0.0.1",
                             str(server.port), *map(str, files)],
                            env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    acked: list[str] = []
    tail: list[str] = []
    current = None
    killed = threading.Event()
    for line in proc.stdout:
        tail = (tail + [line])[-5:]
        if line.startswith("I: Sending file: "):
            current = line.split("I: Sending file: ", 1)[1].strip()
        elif "Received Store Response" in line and "Success" in line and current:
            acked.append(current)
            if len(acked) == 150 and not killed.is_set():
                server.kill9()
                killed.set()
    proc.wait(60)
    assert killed.is_set(), f"storescu finished before the kill ({len(acked)} acked): {tail}"
    assert 150 <= len(acked) < 1000
    del lst
    restarted = HounsfieldServer(data, port=server.port).start()
    try:
        archive = Archive.open(load_settings(data_dir=data, profile="demo"))
        with archive.session() as s:
            stored = set(s.scalars(select(Instance.sop_instance_uid)))
        archive.close()
        want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in acked}
        assert want <= stored, f"{len(want - stored)} acknowledged instances lost"
        r = subprocess.run([sys.executable, "-c", "from hounsfield.cli.main import app; app()", "--data-dir", str(data),
                            "--profile", "demo", "check"],
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "consistent" in r.stdout, r.stdout + r.stderr
    finally:
        restarted.stop()


def test_two_processes_share_one_port_and_data_dir(tmp_path):
    """dicom.reuse_port: two `serve` processes on one port and one data dir (more cores)."""
    data = tmp_path / "var"
    env = {"HOUNSFIELD_DICOM__REUSE_PORT": "true"}
    first = HounsfieldServer(data, env=env).start()
    second = HounsfieldServer(data, port=first.port, env=env).start()
    try:
        sets = [make_ct_series(tmp_path / f"s{i}", 10, size=32, patient_id=f"RP{i}", seed=i)
                for i in range(6)]
        procs = [subprocess.Popen(["storescu", "-aec", "HOUNSFIELD", "127.0.0.1",
                                   str(first.port), *map(str, f)], env=PEER_ENV)
                 for f in sets]
        assert [p.wait(120) for p in procs] == [0] * 6
    finally:
        second.stop()
        first.stop()
    archive = Archive.open(load_settings(data_dir=data, profile="demo"))
    with archive.session() as s:
        assert len(set(s.scalars(select(Instance.sop_instance_uid)))) == 60
    from hounsfield.archive.check import check

    assert check(archive).clean
    archive.close()
