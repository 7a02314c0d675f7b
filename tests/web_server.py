"""Our HTTP server, started for real (uvicorn on a free port in a thread), and an Orthanc with
the DICOMweb plugin (Debian packages), for the web and DICOMweb suites."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import requests
import uvicorn

from hounsfield.archive import Archive
from hounsfield.config import Settings
from hounsfield.web import auth
from hounsfield.web.app import create_app
from tests.helpers import free_port, wait_port


class LiveServer:
    """``create_app`` served by uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive
        self.app = create_app(settings, archive)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def flush_audit(self) -> None:
        self.app.state.audit.flush()

    def user(self, name: str, role: str, password: str = "correct-horse-1") -> requests.Session:
        """A logged-in ``requests`` session for a new user ``name`` with ``role``."""
        auth.create_user(self.archive, name, role, password)
        s = requests.Session()
        r = s.post(self.url + "/api/auth/login", json={"username": name, "password": password},
                   timeout=30)
        r.raise_for_status()
        return s

    def token(self, name: str, role: str) -> str:
        try:
            auth.create_user(self.archive, name, role, None)
        except Exception:  # noqa: BLE001 - already there
            pass
        secret, _t = auth.issue_token(self.archive, name, days=1)
        return secret


ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


class OrthancServer:
    """Orthanc + the orthanc-dicomweb plugin, loopback ports, temporary storage."""

    def __init__(self, base: Path) -> None:
        if not Path(ORTHANC_BIN).exists() or not (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").exists():
            raise RuntimeError("Orthanc / orthanc-dicomweb not installed: run scripts/setup.sh")
        self.base = base
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def start(self) -> OrthancServer:
        self.base.mkdir(parents=True, exist_ok=True)
        plugins = self.base / "plugins"
        plugins.mkdir(exist_ok=True)
        target = plugins / "libOrthancDicomWeb.so"
        if not target.exists():
            target.symlink_to(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")
        config = {
            "Name": "HF-TEST", "StorageDirectory": str(self.base / "db"),
            "IndexDirectory": str(self.base / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [str(plugins)],
            "HttpCompressionEnabled": False, "StorageCompression": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                         "WadoRoot": "/wado", "Ssl": False, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
            "ConcurrentJobs": 2, "HttpThreadsCount": 16,
        }
        cfg = self.base / "orthanc.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.base / "orthanc.log", "wb"), env=env)
        wait_port(self.http_port, timeout=60)
        for _ in range(200):
            try:
                if requests.get(self.url + "/system", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return self

    def upload(self, data: bytes) -> None:
        r = requests.post(self.url + "/instances", data=data, timeout=60)
        r.raise_for_status()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
