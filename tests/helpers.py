"""Test helpers shared by every suite: free ports, the offline real-DICOM corpus, peers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom

try:
    import data_store  # the pydicom-data package
except ImportError:  # pragma: no cover
    data_store = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_CHARSETS = Path(pydicom.__file__).parent / "data" / "charset_files"
PYDICOM_DATA = Path(data_store.__file__).parent / "data" if data_store else None


def corpus_files() -> list[Path]:
    """Every file of pydicom's test files and pydicom-data (offline real DICOM, and junk)."""
    roots = [PYDICOM_FILES, PYDICOM_CHARSETS] + ([PYDICOM_DATA] if PYDICOM_DATA else [])
    return sorted(p for r in roots for p in r.rglob("*") if p.is_file())


def corpus(name: str) -> Path:
    """One named file of the offline corpus."""
    for root in (PYDICOM_FILES, PYDICOM_CHARSETS, PYDICOM_DATA):
        if root is None:
            continue
        hits = list(root.rglob(name))
        if hits:
            return hits[0]
    raise FileNotFoundError(name)


def pg_bin() -> Path | None:
    for v in ("17", "16", "15"):
        p = Path(f"/usr/lib/postgresql/{v}/bin")
        if (p / "initdb").exists():
            return p
    return None


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free port (started by the tests themselves)."""

    def __init__(self, base: Path) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not installed (scripts/setup.sh)")
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def _run(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def start(self) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        data = self.base / "data"
        if os.geteuid() == 0:
            os.chmod(self.base, 0o755)
            shutil.chown(self.base, "postgres", "postgres")
        subprocess.run(self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                                 "-A", "trust", "--no-sync", "-E", "UTF8"),
                       check=True, capture_output=True)
        self.proc = subprocess.Popen(
            self._run(str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                      "-k", str(self.base), "-c", "listen_addresses=127.0.0.1",
                      "-c", "fsync=off", "-c", "max_connections=200"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        time.sleep(0.3)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def restart(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected) and start it again on the
        same port and data directory."""
        data = self.base / "data"
        # pg_ctl waits until the server is down (terminating the runuser wrapper does not)
        subprocess.run(self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-m", "fast",
                                 "-w", "stop"), check=True, capture_output=True, timeout=120)
        if self.proc is not None:
            self.proc.wait(60)
        self.proc = subprocess.Popen(
            self._run(str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                      "-k", str(self.base), "-c", "listen_addresses=127.0.0.1",
                      "-c", "fsync=off", "-c", "max_connections=200"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, timeout=60)
        time.sleep(0.3)

    def create_db(self, name: str) -> str:
        import psycopg

        for _ in range(50):
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                                     autocommit=True) as c:
                    c.execute(f'CREATE DATABASE "{name}"')
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
