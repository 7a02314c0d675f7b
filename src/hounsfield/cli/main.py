"""``hounsfield``: the command line.  Each area registers its commands explicitly below."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hounsfield import __version__
from hounsfield.cli import (
    ai_cmds,
    archive_cmds,
    deid_cmds,
    demo_cmds,
    dicom_cmds,
    evaluate_cmds,
    export_cmds,
    imaging_cmds,
    job_cmds,
    mpps_cmds,
    ups_cmds,
    route_cmds,
    synth_cmds,
    web_cmds,
)
from hounsfield.cli.common import State

app = typer.Typer(
    name="hounsfield",
    help="Hounsfield — open medical-imaging AI platform (archive, AI platform, clinical layer).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML settings file")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="data directory (default ./var)")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="demo | production")] = None,
) -> None:
    state = State()
    state.config = config
    if data_dir is not None:
        state.overrides["data_dir"] = data_dir
    if profile is not None:
        state.overrides["profile"] = profile
    ctx.obj = state


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


archive_cmds.register(app)
demo_cmds.register(app)
web_cmds.register(app)
imaging_cmds.register(app)
deid_cmds.register(app)
synth_cmds.register(app)
dicom_cmds.register(app)
evaluate_cmds.register(app)
ai_cmds.register(app)
job_cmds.register(app)
route_cmds.register(app)
export_cmds.register(app)
mpps_cmds.register(app)
ups_cmds.register(app)
