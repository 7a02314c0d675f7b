"""`hounsfield serve`: one process group runs the DICOM node and the web server together.

A modality (dcmtk storescu) sends a CT; a browser-side client (httpx, logged in as the demo
admin) finds it over QIDO-RS and reads its metadata; SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pydicom

from tests.helpers import corpus, free_port, wait_port


def test_serve_runs_dicom_node_and_web_together(tmp_path):
    dicom_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hounsfield.cli", "--data-dir", str(tmp_path / "var"),
         "--profile", "demo", "serve", "--dicom-port", str(dicom_port),
         "--http-port", str(http_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(dicom_port, timeout=60)
        wait_port(http_port, timeout=60)
        ct = corpus("CT_small.dcm")
        env = dict(os.environ, TCP_NODELAY="1")
        subprocess.run(["storescu", "-aec", "HOUNSFIELD", "127.0.0.1", str(dicom_port), str(ct)],
                       check=True, env=env, capture_output=True)
        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/dicom-web/studies").status_code == 401
            r = c.post("/api/auth/login", json={"username": "demo", "password": "demo"})
            assert r.status_code == 200, r.text
            studies = c.get("/dicom-web/studies").json()
            uid = pydicom.dcmread(ct).StudyInstanceUID
            assert [s["0020000D"]["Value"][0] for s in studies] == [uid]
            meta = c.get(f"/dicom-web/studies/{uid}/metadata").json()
            assert meta[0]["00080018"]["Value"] == [pydicom.dcmread(ct).SOPInstanceUID]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
