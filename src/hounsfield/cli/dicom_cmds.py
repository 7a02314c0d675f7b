"""DICOM commands: serve (the node + study-stable monitor), echo, send, pull."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Optional, Protocol

import typer
from rich.table import Table

from hounsfield.cli.common import console, edge, err_console, progress, state
from hounsfield.dicom import status as st
from hounsfield.pacs.destinations import label, resolve


class Component(Protocol):
    """Something ``serve`` runs: started in order, stopped in reverse order."""

    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("echo")(echo_cmd)
    app.command("send")(send_cmd)
    app.command("pull")(pull_cmd)


ROLES = ("all", "api", "dicom", "worker")


def build_components(archive, role: str = "all", *, http_port: int | None = None,  # noqa: ANN001
                     http_host: str | None = None) -> list[Component]:
    """What ``serve`` runs for ``role``: ``dicom`` = the DICOM node + study-stable monitor,
    ``api`` = the HTTP server (DICOMweb, API, console, OHIF), ``worker`` = the job worker
    (routes stable studies, runs AI jobs and exports), ``all`` = all three (embedded default)."""
    from hounsfield.ingest.scp import DicomNode
    from hounsfield.ingest.stable import StableMonitor
    from hounsfield.web.server import HttpServer

    out: list[Component] = []
    if role in ("all", "worker"):
        # first: the pipeline is enabled (and recovering) before the first study is accepted
        from hounsfield.deploy.worker import JobWorker

        out.append(JobWorker(archive))
    if role in ("all", "dicom"):
        from hounsfield.pacs.commitment import record_report

        out += [DicomNode(archive, commitment_reports=record_report), StableMonitor(archive)]
    if role in ("all", "api"):
        out.append(HttpServer(archive, host=http_host, port=http_port))
    return out


def run_components(components: list[Component], stop: threading.Event) -> None:
    """Start every component, wait for ``stop`` (SIGINT/SIGTERM), stop them in reverse order."""
    started: list[Component] = []
    try:
        for c in components:
            c.start()
            started.append(c)
        stop.wait()
    finally:
        for c in reversed(started):
            try:
                c.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others regardless
                err_console.print(f"error stopping {getattr(c, 'name', c)}: {exc}")


def serve_cmd(
    ctx: typer.Context,
    dicom_port: Annotated[Optional[int], typer.Option("--dicom-port", help="DICOM port (default "
                          "settings.dicom.port / HOUNSFIELD_DICOM__PORT)")] = None,
    ae_title: Annotated[Optional[str], typer.Option("--ae-title", help="our AE title")] = None,
    dicom_host: Annotated[Optional[str], typer.Option("--dicom-host", help="bind address")] = None,
    http_port: Annotated[Optional[int], typer.Option("--http-port", help="HTTP port (default "
                         "settings.http.port / HOUNSFIELD_HTTP__PORT)")] = None,
    http_host: Annotated[Optional[str], typer.Option("--http-host", help="HTTP bind address")] = None,
    role: Annotated[str, typer.Option("--role", help="all (embedded default) | api | dicom | worker")] = "all",
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run the platform in the foreground until SIGINT / SIGTERM: the HTTP server (DICOMweb,
    API, console, OHIF at /viewer/), the DICOM node (C-ECHO/C-STORE/C-FIND/C-MOVE/C-GET SCP)
    the study-stable monitor and the job worker (routing, AI jobs, export to PACS) — or one role
    of them (``--role api|dicom|worker``) for scale-out."""
    if role not in ROLES:
        err_console.print(f"[bold red]error:[/] --role must be one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one line per copied module
    with edge():
        st_ = state(ctx)
        dicom = st_.settings.dicom
        updates = {k: v for k, v in {"port": dicom_port, "ae_title": ae_title,
                                     "host": dicom_host}.items() if v is not None}
        if updates:
            st_._settings = st_.settings.model_copy(
                update={"dicom": dicom.model_copy(update=updates)})
        archive = st_.archive
        components = build_components(archive, role, http_port=http_port, http_host=http_host)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_a: stop.set())
        d = archive.settings.dicom
        if role in ("all", "dicom"):
            console.print(f"DICOM node {d.ae_title} on {d.host}:{d.port}")
        for c in components:
            if getattr(c, "name", "") == "http":
                console.print(f"web on http://{c.host}:{c.port}/  (console; OHIF viewer at "
                              f"/viewer/; DICOMweb at /dicom-web)")
        if role in ("all", "worker"):
            console.print(f"job worker {archive.settings.jobs.executor_id} (AI jobs, export)")
        console.print(f"data in {archive.settings.data_dir}; Ctrl-C stops")
        run_components(components, stop)
        console.print("stopped")
        if role in ("all", "worker"):
            # a job step still running is left for recovery (its worker thread never
            # records an outcome, see deploy.engine.abandon): exit without waiting for it
            import os
            import sys

            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(0)


def echo_cmd(ctx: typer.Context,
             dest: Annotated[str, typer.Argument(help="remote name or AE@host:port")]) -> None:
    """C-ECHO a DICOM node."""
    from hounsfield.pacs.scu import echo

    with edge():
        settings = state(ctx).settings
        node = resolve(settings, dest)
        ms = echo(settings, node)
        console.print(f"C-ECHO {label(node)}: Success ({ms:.1f} ms)")


def send_cmd(
    ctx: typer.Context,
    uids: Annotated[list[str], typer.Argument(help="study, series or SOP instance UIDs")],
    to: Annotated[str, typer.Option("--to", help="remote name or AE@host:port")],
) -> None:
    """C-STORE studies/series/instances to a DICOM node (transcoding if the peer needs it)."""
    from hounsfield.pacs.scu import send

    with edge():
        archive = state(ctx).archive
        node = resolve(archive.settings, to)
        with progress() as bar:
            task = bar.add_task(f"sending to {label(node)}", total=None)
            report = send(archive, uids, node, on_item=lambda _i: bar.advance(task))
        _print_report(report)
        if not report.ok:
            raise typer.Exit(1)


def pull_cmd(
    ctx: typer.Context,
    query: Annotated[list[str], typer.Argument(help="Keyword=value terms, e.g. PatientID=123 "
                                                    "StudyDate=20240101-20241231")],
    source: Annotated[str, typer.Option("--from", help="PACS: remote name or AE@host:port")],
    method: Annotated[str, typer.Option("--method", help="move (PACS sends to our node) | get")]
    = "move",
) -> None:
    """Query a PACS (C-FIND) and retrieve the matching studies into the archive (C-MOVE/C-GET).

    With --method move the PACS must know our AE title; if `hounsfield serve` is not running, a
    temporary Storage SCP is started on the configured DICOM port for the duration of the pull.
    """
    from hounsfield.pacs.pull import parse_query, pull

    if method not in ("move", "get"):
        err_console.print("error: --method is 'move' or 'get'")
        raise typer.Exit(2)
    with edge():
        archive = state(ctx).archive
        node = resolve(archive.settings, source)
        filters = parse_query(query)
        receiver = None
        if method == "move" and not _listening(archive.settings):
            from hounsfield.ingest.scp import DicomNode

            receiver = DicomNode(archive)
            receiver.start()
        try:
            with progress() as bar:
                task = bar.add_task(f"pulling from {label(node)}", total=None)
                report = pull(archive, node, filters, method=method,  # type: ignore[arg-type]
                              on_study=lambda _i: bar.advance(task))
        finally:
            if receiver is not None:
                receiver.stop()
        _print_report(report, per_study=True)
        if not report.ok:
            raise typer.Exit(1)


def _listening(settings) -> bool:  # noqa: ANN001
    import socket

    try:
        with socket.create_connection((settings.dicom.host, settings.dicom.port), timeout=0.5):
            return True
    except OSError:
        return False


def _print_report(report, *, per_study: bool = False) -> None:  # noqa: ANN001
    t = Table(title=f"{report.operation} {report.destination}", show_header=False)
    t.add_row("succeeded", str(report.sent))
    t.add_row("failed", str(len(report.failed)))
    console.print(t)
    for note in report.notes:
        console.print(note, markup=False)
    rows = report.items if per_study else report.failed
    for i in rows[:50]:
        what = i.study_instance_uid if per_study else i.sop_instance_uid
        code = "no association" if i.status < 0 else st.name(i.status)
        console.print(f"  {what}: {code} after {i.attempts} attempt(s) {i.detail}",
                      markup=False, highlight=False)
