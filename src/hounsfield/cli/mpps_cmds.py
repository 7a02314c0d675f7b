"""``hounsfield mpps list|show``: the performed procedure steps modalities reported (MPPS) and
what the MPPS trigger made of them (the console's /mpps page and /api/mpps show the same)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli.common import console, edge, state

mpps_app = typer.Typer(help="Modality Performed Procedure Steps (MPPS): list, show.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(mpps_app, name="mpps")


@mpps_app.command("list")
def list_cmd(
    ctx: typer.Context,
    state_: Annotated[Optional[str], typer.Option(
        "--state", help="IN PROGRESS | COMPLETED | DISCONTINUED (comma-separated)")] = None,
    trigger: Annotated[Optional[str], typer.Option(
        "--trigger-state", help="waiting | fired | mismatch | discontinued | back-catalogue")]
    = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study Instance UID")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest steps: state, study, station, instances, trigger state (mismatches with the
    number of missing instances), job."""
    from hounsfield.ingest.mpps import list_mpps, mpps_dict

    with edge():
        rows = list_mpps(state(ctx).archive, state=state_, trigger_state=trigger,
                         study_uid=study, limit=limit)
        if as_json:
            typer.echo(json.dumps([mpps_dict(r) for r in rows], indent=1))
            return
        t = Table("MPPS", "state", "study", "patient", "station", "instances", "trigger", "job",
                  "ended")
        for r in rows:
            trig = r.trigger_state or "-"
            if r.trigger_state == "mismatch":
                trig = f"[red]mismatch: {r.n_missing} missing[/]"
            elif r.route_outcome:
                trig += f" ({r.route_outcome})"
            t.add_row(r.sop_instance_uid[-24:], r.state, r.study_instance_uid[-24:],
                      r.patient_id, r.calling_ae, str(r.n_referenced), trig, r.job_id,
                      r.ended_at.strftime("%Y-%m-%d %H:%M:%S") if r.ended_at else "")
        console.print(t)


@mpps_app.command("show")
def show_cmd(ctx: typer.Context, sop_instance_uid: Annotated[str, typer.Argument()]) -> None:
    """One step as JSON, with its data set (DICOM JSON) and missing instances."""
    from hounsfield.errors import NotFound
    from hounsfield.ingest.mpps import get_mpps, mpps_dict

    with edge():
        row = get_mpps(state(ctx).archive, sop_instance_uid)
        if row is None:
            raise NotFound(f"no MPPS {sop_instance_uid}")
        typer.echo(json.dumps(mpps_dict(row, with_dataset=True), indent=1))
