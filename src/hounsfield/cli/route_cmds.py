"""``hounsfield rules validate`` and ``hounsfield route explain``: routing rules, without running.

Exit statuses: ``rules validate`` 0 when the file is valid, 1 when it is not (every problem is
printed with its line); ``route explain`` 0 whenever a decision was made (also "no rule
matched"), 1 when the rules file is invalid, 2 for other errors (unknown study, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from hounsfield.cli.common import edge, state
from hounsfield.errors import InvalidInput

rules_app = typer.Typer(help="Routing rules (which model alias runs on which study).",
                        no_args_is_help=True)
route_app = typer.Typer(help="Routing decisions for studies in the archive.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
    app.add_typer(route_app, name="route")


def _load(ctx: typer.Context, file: Path | None):
    """The rule set of ``file`` (default: the settings' rules file); exit 1 when invalid."""
    from hounsfield.deploy.rules import load_rules, profile_names, rules_path

    settings = state(ctx).settings
    path = file if file is not None else rules_path(settings)
    try:
        return path, load_rules(path, profiles=profile_names(settings))
    except InvalidInput as exc:
        lines = exc.detail if isinstance(exc.detail, list) and exc.detail else [exc.reason]
        typer.echo(f"invalid routing rules ({path}):", err=True)
        for line in lines:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1) from None


def _match_summary(rule) -> str:  # noqa: ANN001
    import json

    from hounsfield.deploy.rules import Range

    parts = []
    for key, value in rule.match.model_dump(exclude_defaults=True).items():
        attr = getattr(rule.match, key)
        if isinstance(attr, Range):
            text = str(attr)
        elif isinstance(value, list):
            text = ", ".join(map(str, value))
        elif isinstance(value, dict):
            text = json.dumps({k: v for k, v in value.items() if v not in ([], None)})
        else:
            text = json.dumps(value)
        parts.append(f"{key} {text}")
    return "; ".join(parts) or "(every study)"


def _preference_text(pref) -> str:  # noqa: ANN001
    from hounsfield.deploy.rules import PREFERENCE_MEANING

    return PREFERENCE_MEANING.get(pref, str(pref)) if isinstance(pref, str) else str(pref)


@rules_app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    file: Annotated[Optional[Path], typer.Argument(
        help="rules YAML file (default: deploy.rules_file, else <data_dir>/rules.yaml)")] = None,
) -> None:
    """Check a rules file; print the rules in the order they are tried, or every error."""
    with edge():
        path, rules = _load(ctx, file)
        typer.echo(f"{path}: {len(rules.rules)} rule(s), in the order they are tried")
        for k, r in enumerate(rules.ordered(), start=1):
            state_text = "" if r.enabled else ", disabled"
            typer.echo(f"{k}. {r.name} (priority {r.priority}{state_text}): model {r.model}, "
                       f"profile {r.profile}, destinations {', '.join(r.destinations) or '(none)'}")
            typer.echo(f"   match: {_match_summary(r)}")
            typer.echo(f"   prefer: {', '.join(_preference_text(p) for p in r.prefer) or '(none)'}")


@route_app.command("explain")
def explain_cmd(
    ctx: typer.Context,
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    rules_file: Annotated[Optional[Path], typer.Option(
        "--rules", help="rules YAML file (default: the settings' rules file)")] = None,
) -> None:
    """Print the routing decision for a study — rule, model, series and every reason — without
    running anything."""
    from hounsfield.deploy.selection import route

    with edge():
        _, rules = _load(ctx, rules_file)
        decision = route(state(ctx).archive, study_uid, rules)
        for line in decision.log:
            typer.echo(line)
        if decision.outcome == "routed":
            typer.echo(f"=> routed: rule {decision.rule}, model {decision.model}, profile "
                          f"{decision.profile}, series {decision.series_uid}")
        elif decision.outcome == "no-series":
            typer.echo(f"=> rule {decision.rule} matched but no series qualified: the job "
                       "would fail with that reason")
        else:
            typer.echo("=> no rule matched: recorded, no job")
