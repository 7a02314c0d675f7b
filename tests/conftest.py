"""Fixtures: settings and an archive in a temporary data dir, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hounsfield.archive import Archive
from hounsfield.config import Settings, load_settings
from tests.helpers import PostgresServer

_db_counter = itertools.count()

# pynetdicom installs Python look-alikes of dcmtk's tools (echoscu, storescu, ...) into the
# venv's bin/; with an activated venv they would shadow the real dcmtk peers the tests name.
if shutil.which("storescu", path="/usr/bin"):
    os.environ["PATH"] = "/usr/bin" + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL server for the whole session (real peer, free port)."""
    # not under pytest's tmp dir: that is private to root, and the server runs as postgres
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="hf-pg-")))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"cannot start PostgreSQL: {exc}")
    yield server
    server.stop()
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a fresh SQLite archive in a temporary data dir (demo profile)."""
    return load_settings(data_dir=tmp_path / "var", profile="demo")


@pytest.fixture
def archive(settings: Settings):
    a = Archive.open(settings)
    yield a
    a.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_archive(request: pytest.FixtureRequest, tmp_path: Path):
    """The same archive suite on SQLite (WAL) and on PostgreSQL."""
    if request.param == "sqlite":
        s = load_settings(data_dir=tmp_path / "var", profile="demo")
    else:
        pg: PostgresServer = request.getfixturevalue("postgres")
        url = pg.create_db(f"hf_{next(_db_counter)}_{tmp_path.name[:20].lower()}")
        s = load_settings(data_dir=tmp_path / "var", profile="demo", database_url=url)
    a = Archive.open(s)
    yield a
    a.close()
