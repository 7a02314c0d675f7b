"""Web commands: ``users add|list|token|passwd``, ``audit``, and ``web`` (the HTTP server alone)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.audit import Action
from hounsfield.audit import query as audit_query
from hounsfield.cli.common import console, edge, err_console, state
from hounsfield.errors import InvalidInput
from hounsfield.web import auth


def register(app: typer.Typer) -> None:
    users = typer.Typer(help="Users, roles and API tokens.", no_args_is_help=True)
    users.command("add")(users_add)
    users.command("list")(users_list)
    users.command("token")(users_token)
    users.command("passwd")(users_passwd)
    app.add_typer(users, name="users")
    app.command("audit")(audit_cmd)
    app.command("web")(web_cmd)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise InvalidInput("no password on standard input")
        return line
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


def users_add(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option("--role", "-r", help="admin | radiologist | annotator | "
                                      "data-scientist | service")],
    full_name: Annotated[str, typer.Option("--full-name", help="shown in the console")] = "",
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="read the password from standard input")] = False,
    no_password: Annotated[bool, typer.Option("--no-password",
                                              help="token-only account (services)")] = False,
) -> None:
    """Add a user (the first admin is created this way; there is no default password)."""
    with edge():
        archive = state(ctx).archive
        ok, why = auth.validate_role(role)
        if not ok:
            raise InvalidInput(why)
        password = None if no_password else _read_password(password_stdin)
        user = auth.create_user(archive, username, role, password, full_name=full_name)
        console.print(f"added user [bold]{user.username}[/] ({user.role})")


def users_list(ctx: typer.Context) -> None:
    """List users and their roles."""
    with edge():
        t = Table("user", "role", "name", "active", "last login")
        for u in auth.list_users(state(ctx).archive):
            t.add_row(u.username, u.role, u.full_name, "yes" if u.active else "no",
                      u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "")
        console.print(t)


def users_token(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="whose token")],
    name: Annotated[str, typer.Option("--name", help="what the token is for")] = "",
    days: Annotated[Optional[float], typer.Option("--days", help="lifetime (default: "
                                                  "web.token_days)")] = None,
) -> None:
    """Issue an API token (printed once on standard output; send it as 'Bearer <token>')."""
    with edge():
        secret, token = auth.issue_token(state(ctx).archive, username, name=name, days=days)
        err_console.print(f"token {token.prefix}… for {username}, expires "
                          f"{token.expires_at:%Y-%m-%d %H:%M} UTC")
        typer.echo(secret)


def users_passwd(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Set a user's password (ends their browser sessions)."""
    with edge():
        auth.set_password(state(ctx).archive, username, _read_password(password_stdin))
        console.print(f"password of {username} changed")


def audit_cmd(
    ctx: typer.Context,
    action: Annotated[Optional[str], typer.Option(help="QIDO, WADO, STOW, LOGIN, C-STORE, ...")] = None,
    actor: Annotated[Optional[str], typer.Option(help="user name or AE title")] = None,
    study: Annotated[Optional[str], typer.Option(help="StudyInstanceUID")] = None,
    outcome: Annotated[Optional[int], typer.Option(help="0 success, 4, 8, 12 failures")] = None,
    since: Annotated[Optional[datetime], typer.Option(help="from this time (UTC)")] = None,
    until: Annotated[Optional[datetime], typer.Option(help="until this time (UTC)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show the audit trail (newest first): who accessed which study, when, from where."""
    with edge():
        if action is not None and action not in {a.value for a in Action}:
            raise InvalidInput(f"unknown action {action!r}; one of "
                               f"{', '.join(a.value for a in Action)}")
        filters = {"action": action, "actor": actor, "study_instance_uid": study,
                   "outcome": None if outcome is None else str(outcome)}
        with state(ctx).archive.session() as s:
            rows = audit_query(s, {k: v for k, v in filters.items() if v is not None},
                               since=since, until=until, limit=limit)
        if as_json:
            for r in rows:
                typer.echo(json.dumps({
                    "occurred_at": r.occurred_at.isoformat(), "action": r.action,
                    "event_id": r.event_id, "outcome": r.outcome, "actor": r.actor,
                    "role": r.role, "source": r.source, "study_instance_uid": r.study_instance_uid,
                    "patient_id": r.patient_id, "detail": r.detail}))
            return
        t = Table("when (UTC)", "action", "who", "role", "from", "outcome", "study", "detail")
        for r in rows:
            t.add_row(r.occurred_at.strftime("%Y-%m-%d %H:%M:%S"), r.action, r.actor, r.role,
                      r.source, str(r.outcome), r.study_instance_uid, r.detail[:60])
        console.print(t)


def web_cmd(
    ctx: typer.Context,
    http_port: Annotated[Optional[int], typer.Option("--http-port", help="default: "
                                                     "HOUNSFIELD_HTTP__PORT or 8042")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="default: http.host")] = None,
) -> None:
    """Run the HTTP server only: DICOMweb, API, console and the OHIF viewer."""
    import uvicorn

    from hounsfield.web.app import create_app

    with edge():
        st = state(ctx)
        settings = st.settings
        port = settings.http.port if http_port is None else http_port
        bind = host or settings.http.host
        app = create_app(settings, st.archive)
        err_console.print(f"Hounsfield web on http://{bind}:{port}/ (viewer at /viewer/)")
        uvicorn.run(app, host=bind, port=port, log_level="warning", proxy_headers=True)
