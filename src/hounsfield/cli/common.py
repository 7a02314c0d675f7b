"""Shared CLI plumbing: settings/archive from the global options, error translation, progress."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hounsfield.archive import Archive
from hounsfield.config import Settings, load_settings
from hounsfield.errors import HounsfieldError

console = Console()
err_console = Console(stderr=True)

#: the help of every ``--device`` option (``infer``, ``evaluate``, ``train``)
DEVICE_HELP = "cpu | cuda | cuda:N | auto (the first GPU when there is one, else the CPU)"


class State:
    """What the global options (``--config``, ``--data-dir``) select; built lazily."""

    def __init__(self) -> None:
        self.config: Path | None = None
        self.overrides: dict[str, object] = {}
        self._settings: Settings | None = None
        self._archive: Archive | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, **self.overrides)
        return self._settings

    @property
    def archive(self) -> Archive:
        if self._archive is None:
            self._archive = Archive.open(self.settings)
        return self._archive


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = State()
        ctx.find_root().obj = obj
    return obj


@contextmanager
def edge() -> Iterator[None]:
    """Translate Hounsfield errors into a one-line message and exit status 2."""
    try:
        yield
    except HounsfieldError as exc:
        err_console.print(f"[bold red]error:[/] {exc.reason}")
        sys.exit(2)


def progress() -> Progress:
    """The progress bar every long task shows."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def cli_actor() -> str:
    """Who runs a CLI command, for the audit trail: ``cli:<login name>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name (containers)
        return "cli"
