"""pytest fixtures for the web suites (imported by name into the test modules that use them)."""

from __future__ import annotations

import pytest
from dicomweb_client.api import DICOMwebClient

from hounsfield.archive import Archive
from hounsfield.config import load_settings
from tests.web_data import ct_series, seg_of
from tests.web_server import LiveServer


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """Our server on a fresh SQLite archive (demo profile, 2 MB body limit)."""
    tmp = tmp_path_factory.mktemp("web")
    settings = load_settings(data_dir=tmp / "var", profile="demo", http={"max_body_mb": 2})
    archive = Archive.open(settings)
    server = LiveServer(settings, archive).start()
    yield server
    server.stop()
    archive.close()


@pytest.fixture(scope="module")
def admin_token(live: LiveServer) -> str:
    return live.token("robot-admin", "admin")


@pytest.fixture(scope="module")
def client(live: LiveServer, admin_token: str) -> DICOMwebClient:
    return DICOMwebClient(live.dicomweb, headers={"Authorization": f"Bearer {admin_token}"})


@pytest.fixture(scope="module")
def ct():
    """A 4-slice 32x32 CT series and a SEG over it."""
    cts = ct_series(4, 32, seed="web-ct")
    return cts, seg_of(cts)
