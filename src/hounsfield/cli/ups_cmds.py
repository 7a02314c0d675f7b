"""``hounsfield ups list|show``: the UPS-RS workitems hospital systems asked for and what
Hounsfield's performer did with them (the console's /workitems page shows the same)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli.common import console, edge, state

ups_app = typer.Typer(help="UPS-RS workitems (AI tasks asked for by hospital systems): list, "
                           "show.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ups_app, name="ups")


@ups_app.command("list")
def list_cmd(
    ctx: typer.Context,
    state_: Annotated[Optional[str], typer.Option(
        "--state", help="SCHEDULED | IN PROGRESS | COMPLETED | CANCELED")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study Instance UID")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest workitems: state, task, study, progress, the AI job performing it."""
    from hounsfield.deploy.ups_list import list_workitems, workitem_dict

    with edge():
        rows = [workitem_dict(r) for r in list_workitems(
            state(ctx).archive, state=state_, study_uid=study, limit=limit)]
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        t = Table("workitem", "state", "task", "study", "patient", "progress", "job",
                  "requested by", "created")
        for w in rows:
            st = w["state"] + (" [yellow](cancel requested)[/]" if w["cancel_requested"] else "")
            t.add_row(w["uid"][-24:], st, w["workitem_meaning"] or w["workitem_code"],
                      w["study_instance_uid"][-24:], w["patient_id"],
                      "" if w["progress"] is None else f"{w['progress']} %", w["job_id"],
                      w["created_by"], (w["created_at"] or "")[:19].replace("T", " "))
        console.print(t)


@ups_app.command("show")
def show_cmd(ctx: typer.Context, uid: Annotated[str, typer.Argument(help="workitem UID")]) -> None:
    """One workitem as JSON, with its data set (DICOM JSON, no Transaction UID)."""
    from hounsfield.deploy.ups import get_row
    from hounsfield.deploy.ups_list import workitem_dict

    with edge():
        typer.echo(json.dumps(workitem_dict(get_row(state(ctx).archive, uid), with_dataset=True),
                              indent=1))
