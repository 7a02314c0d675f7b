"""The rules file in force: read, validate against this installation (destinations that exist),
and replace atomically — what the API and the console's rules page use.

``hounsfield rules validate`` checks the file's own syntax and fields; :func:`check` also
refuses rules that name an export destination the settings do not define (a job would only
find out when exporting).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hounsfield.deploy.rules import RuleSet, parse_rules, profile_names, rules_path
from hounsfield.errors import InvalidInput


def unknown_destinations(settings, rules: RuleSet) -> list[str]:  # noqa: ANN001
    known = set(settings.export.destinations)
    return [f"rule {r.name!r}: destination {d!r} is not configured (known: "
            f"{', '.join(sorted(known)) or 'none'}; see [export.destinations.NAME])"
            for r in rules.rules for d in r.destinations if d not in known]


def check(settings, text: str, *, source: str = "rules.yaml") -> RuleSet:  # noqa: ANN001
    """Parse ``text`` and check it against the settings; :class:`InvalidInput` lists every
    problem (``detail``: one line each)."""
    rules = parse_rules(text, source=source, profiles=profile_names(settings))
    problems = unknown_destinations(settings, rules)
    if problems:
        raise InvalidInput("; ".join(problems), detail=problems)
    return rules


def read(settings) -> tuple[Path, str]:  # noqa: ANN001
    path = rules_path(settings)
    try:
        return path, path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return path, ""


def replace(settings, text: str) -> RuleSet:  # noqa: ANN001
    """Validate ``text`` and make it the rules file (written whole or not at all: a temporary
    file in the same folder, fsynced, renamed over the old one)."""
    if len(text.encode()) > 1_000_000:
        raise InvalidInput("a rules file is at most 1 MB")
    path = rules_path(settings)
    rules = check(settings, text, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".rules-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rules
