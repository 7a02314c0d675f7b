"""The HTTP server as a ``serve`` component: uvicorn in a thread, started and stopped with the
DICOM node and the workers (one process group, the embedded default of DESIGN.md)."""

from __future__ import annotations

import threading
import time

import uvicorn

from hounsfield.archive import Archive
from hounsfield.errors import ConfigurationError


class HttpServer:
    """DICOMweb, API, console and OHIF (``create_app``) on ``host:port``."""

    name = "http"

    def __init__(self, archive: Archive, *, host: str | None = None, port: int | None = None) -> None:
        from hounsfield.web.app import create_app

        settings = archive.settings
        self.host = host or settings.http.host
        self.port = settings.http.port if port is None else port
        config = uvicorn.Config(create_app(settings, archive), host=self.host, port=self.port,
                                log_level="warning", proxy_headers=True, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise ConfigurationError(
                    f"HTTP server could not start on {self.host}:{self.port} (port in use?)")
            if time.monotonic() > deadline:
                raise ConfigurationError("HTTP server did not start within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
