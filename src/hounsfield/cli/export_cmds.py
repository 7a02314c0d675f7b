"""``hounsfield destinations list`` and ``hounsfield destinations preflight NAME``: the export
destinations with their PACS-compatibility profiles, and the pre-flight check on demand (the
console's destinations page and ``/api/destinations`` do the same).

Exit statuses of ``destinations preflight``: 0 when everything the profile sends is accepted (or the
destination is STOW-RS: not checkable), 1 when something is refused or the destination cannot
be reached, 2 for other errors (unknown destination, ...).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from hounsfield.cli.common import cli_actor, console, edge, state

export_app = typer.Typer(help="Export destinations: profiles in force and pre-flight checks.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="destinations")


@export_app.command("list")
def destinations_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Each destination: address, profile, effective settings, last pre-flight."""
    from hounsfield.pacs.preflight import overview

    with edge():
        rows = overview(state(ctx).archive)
    if as_json:
        typer.echo(json.dumps(rows, indent=1, default=str))
        return
    t = Table("destination", "address", "profile", "objects", "transfer syntaxes", "commit",
              "pre-flight")
    for d in rows:
        pf = d["preflight"]
        t.add_row(d["name"], d["address"], d["profile"], ", ".join(d["kinds"]),
                  ", ".join(x["name"] for x in d["transfer_syntaxes"]) or "as stored",
                  "yes" if d["storage_commitment"] else "no",
                  (pf["outcome"] + ("" if d["preflight_current"] else " (stale)")) if pf
                  else "not checked")
    console.print(t)
    for d in rows:
        for w in d["warnings"]:
            console.print(f"[yellow]warning[/] {d['name']}: {w}")


@export_app.command("preflight")
def preflight_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="destination name ([export.destinations.NAME])")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Ask destination NAME which SOP classes (and transfer syntaxes) of its profile it
    accepts, by one association that sends nothing; record and print the result."""
    from hounsfield.pacs.preflight import run

    with edge():
        r = run(state(ctx).archive, name, actor=cli_actor())
    if as_json:
        typer.echo(json.dumps(r.as_dict(), indent=1, default=str))
    else:
        console.print(f"[bold]{r.destination}[/] ({r.address}), profile {r.profile}: "
                      f"[bold]{r.outcome}[/] — {r.detail}")
        t = Table("kind", "SOP class", "UID", "result")
        for a in r.accepted:
            t.add_row(a["kind"], a["name"], a["sop_class_uid"],
                      "accepted: " + ", ".join(_ts(x) for x in a["transfer_syntaxes"]))
        for x in r.refused:
            t.add_row(x["kind"], x["name"], x["sop_class_uid"], f"[red]refused: {x['reason']}[/]")
        if r.accepted or r.refused:
            console.print(t)
        for w in r.warnings:
            console.print(f"[yellow]warning[/] {w}")
    if r.outcome not in ("ok", "not checkable"):
        raise typer.Exit(1)


def _ts(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid
