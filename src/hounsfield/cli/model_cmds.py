"""``models promote|demote|rollback|history``: approved models only (see
:mod:`hounsfield.registry.approval`).  Changes need ``--as USER``, a Hounsfield user (see
``hounsfield users list``) whose role is admin; the OS user is recorded as where it came from."""

from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli.common import console, edge, state
from hounsfield.errors import PermissionDenied

AsUser = Annotated[str, typer.Option("--as", help="your Hounsfield user name (role admin)")]
Reason = Annotated[str, typer.Option("--reason", help="why (kept in the history and the audit "
                                     "trail)")]
Alias = Annotated[str, typer.Option("--alias", help="the alias routing rules name")]


def register(models: typer.Typer) -> None:
    models.command("promote")(promote_cmd)
    models.command("demote")(demote_cmd)
    models.command("rollback")(rollback_cmd)
    models.command("history")(history_cmd)


def _approver(st, username: str):  # noqa: ANN001, ANN202
    """The acting admin: an active Hounsfield user (their role is checked by the registry)."""
    from hounsfield.registry.approval import Approver
    from hounsfield.web.auth import get_user

    user = get_user(st.archive, username)
    if not user.active:
        raise PermissionDenied(f"user {username!r} is disabled")
    try:
        os_user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers)
        os_user = "?"
    return Approver(user.username, user.role, f"cli:{os_user}")


def _registry(st):  # noqa: ANN001, ANN202
    from hounsfield.registry.mlflow_registry import ModelRegistry

    return ModelRegistry(st.settings)


def _done(entry) -> None:  # noqa: ANN001
    console.print(f"{entry.action}: {entry.alias} {entry.from_version or '-'} -> "
                  f"{entry.to_version or '-'} by {entry.by} at {entry.at}", highlight=False)


def promote_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to promote")],
    as_user: AsUser,
    reason: Reason,
    alias: Alias = "production",
    report: Annotated[Optional[str], typer.Option(
        help="the attached report that counts (default: the newest attached)")] = None,
) -> None:
    """Point NAME@ALIAS at a version whose evaluation passes the recipe's targets (admins)."""
    from hounsfield.registry import approval

    with edge():
        st = state(ctx)
        entry = approval.promote(_registry(st), st.archive, ref, approver=_approver(st, as_user),
                                 reason=reason, alias=alias, report=report)
        _done(entry)
        console.print(f"report {entry.report} passed; Device UID {entry.device_uid}",
                      highlight=False)


def demote_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="model NAME")],
               as_user: AsUser, reason: Reason, alias: Alias = "production") -> None:
    """Remove NAME@ALIAS: nothing is routed to it until a version is promoted again (admins)."""
    from hounsfield.registry import approval

    with edge():
        st = state(ctx)
        _done(approval.demote(_registry(st), st.archive, name, approver=_approver(st, as_user),
                              reason=reason, alias=alias))


def rollback_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="model NAME")],
                 as_user: AsUser, reason: Reason, alias: Alias = "production") -> None:
    """Move NAME@ALIAS back to the version that held it before (admins)."""
    from hounsfield.registry import approval

    with edge():
        st = state(ctx)
        _done(approval.rollback(_registry(st), st.archive, name,
                                approver=_approver(st, as_user), reason=reason, alias=alias))


def history_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="model NAME")],
                as_json: Annotated[bool, typer.Option("--json", help="one JSON object per "
                                                      "line")] = False) -> None:
    """Every promotion, demotion and rollback of a model, oldest first."""
    from hounsfield.registry import approval

    with edge():
        entries = approval.history(_registry(state(ctx)), name)
        if as_json:
            for e in entries:
                typer.echo(e.to_json())
            return
        t = Table("when (UTC)", "action", "alias", "from", "to", "who", "report", "reason")
        for e in entries:
            t.add_row(e.at, e.action, e.alias, e.from_version or "-", e.to_version or "-", e.by,
                      e.report or "", e.reason)
        console.print(t)


def print_approval_lines(reg, versions) -> None:  # noqa: ANN001
    """One plain line per version (never cut to the terminal width, unlike a table cell):
    ``nodules@1  aliases: production  evaluation: PASS luna-v1-test  device UID: 2.25...``."""
    from hounsfield.registry.approval import evaluation

    for mv in versions:
        ev = evaluation(reg, mv)
        verdict = "none" if ev.label is None else f"{'PASS' if ev.passed else 'FAIL'} {ev.label}"
        typer.echo(f"{mv.ref}  aliases: {','.join(mv.aliases) or '-'}  evaluation: {verdict}  "
                   f"device UID: {mv.device_uid}")
