"""Approved models only: promotion to an alias (``NAME@production``), demotion and rollback.

A version becomes ``NAME@ALIAS`` (an MLflow registered-model alias) only when

1. **its evaluation passes the recipe's acceptance targets.**  The evaluation that counts is
   the *newest attached report* (``ModelRegistry.attach_report``, as ``train`` and
   ``hounsfield evaluate`` do), or the one the admin names (``report=LABEL``).  Its
   ``report.json`` must say ``passed`` and must have been judged against targets no looser
   than the recipe's (``configs/hounsfield.json`` → ``recipe.targets`` in the version's
   bundle: a ``min_*`` target may not be lower, a ``max_*`` not higher, any other equal).  A
   bundle without a recipe (a MONAI zoo import) is judged by the report's own targets, and
   the history says so.
2. **an admin approves it** (:class:`Approver` with role ``admin``); the doors (CLI, API,
   console) establish who that is.

Every promotion, demotion and rollback — and every refused attempt — is written to the audit
trail (PS3.15 A.5.3.11 Security Alert, "Software Configuration"), and each change is appended
to the model's history: one registered-model tag per event (``history.<ms>.<random>`` → JSON
with who, when, alias, from-version, to-version, reason, the report that counted and the
Device UID now routed to).  Tags are append-only, so two admins acting at once both land.

Rollback moves the alias back to the version that held it before the current one (after a
demotion: the version demoted), replaying the history as a stack; the target must still pass.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hounsfield import audit
from hounsfield.errors import Conflict, HounsfieldError, InvalidInput, NotFound, PermissionDenied
from hounsfield.registry.mlflow_registry import PRODUCTION, ModelVersionInfo, validate_alias

if TYPE_CHECKING:
    from hounsfield.archive.archive import Archive
    from hounsfield.registry.mlflow_registry import ModelRegistry

ADMIN_ROLE = "admin"
HISTORY_PREFIX = "history."


class PromotionRefused(Conflict):
    """The version may not hold the alias (its evaluation does not pass): HTTP 409."""


@dataclass(frozen=True)
class Approver:
    """Who acts: a Hounsfield user name, their role, and from where (``cli:<os user>``, an IP)."""

    username: str
    role: str
    source: str = ""


@dataclass(frozen=True)
class Evaluation:
    """The evaluation that counts for promoting one version, and its verdict."""

    ref: str
    label: str | None
    passed: bool
    #: why it does not pass (empty when it does)
    problems: list[str] = field(default_factory=list)
    targets: dict[str, Any] | None = None
    targets_from: str = ""
    #: the admin named the report (otherwise the newest attached one counts)
    named: bool = False

    @property
    def reason(self) -> str:
        if self.label is None:
            return "; ".join(self.problems)
        which = "the named" if self.named else "the newest attached"
        head = (f"the evaluation that counts is {which} report {self.label!r}"
                f" (targets: {self.targets_from})")
        return head + (": " + "; ".join(self.problems) if self.problems else ": passed")


@dataclass(frozen=True)
class HistoryEntry:
    """One change of an alias."""

    action: str  # promote | demote | rollback
    alias: str
    from_version: str | None
    to_version: str | None
    by: str
    role: str
    at: str  # ISO 8601, UTC
    reason: str
    source: str = ""
    report: str | None = None
    device_uid: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HistoryEntry:
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


# -- the evaluation gate ----------------------------------------------------------------------

def attached_reports(reg: ModelRegistry, mv: ModelVersionInfo) -> list[str]:
    """Labels of the reports attached to ``mv``, newest first (``eval.<label>.passed`` tags;
    the attach time tag, or for older attachments the report file's time, orders them)."""
    labels = [k[len("eval."):-len(".passed")] for k in mv.tags
              if k.startswith("eval.") and k.endswith(".passed")]

    def when(label: str) -> float:
        ms = mv.tags.get(f"eval.{label}.attached_ms", "")
        if ms.isdigit():
            return int(ms) / 1000
        if not mv.run_id:
            return 0.0
        f = reg.run_artifacts(mv.run_id) / "evaluation" / label / "report.json"
        return f.stat().st_mtime if f.is_file() else 0.0

    return sorted(labels, key=lambda lb: (when(lb), lb), reverse=True)


def recipe_targets(reg: ModelRegistry, mv: ModelVersionInfo) -> tuple[dict[str, Any] | None, str]:
    """The acceptance targets of the recipe ``mv`` was trained by, and where they came from."""
    hf = reg.bundle_path(mv) / "configs" / "hounsfield.json"
    if not hf.is_file():
        return None, "the report's own (the bundle names no recipe)"
    try:
        recipe = json.loads(hf.read_text()).get("recipe") or {}
    except (json.JSONDecodeError, AttributeError):
        raise InvalidInput(f"{hf}: not a JSON object; the bundle of {mv.ref} is damaged") from None
    targets = recipe.get("targets")
    if not isinstance(targets, dict):
        return None, "the report's own (the bundle's recipe sets none)"
    return targets, f"recipe {recipe.get('name', '?')!r}"


def _looser(key: str, required: Any, used: Any) -> bool:
    if required is None:
        return False
    if used is None:
        return True
    if key.startswith("min_"):
        return float(used) < float(required)
    if key.startswith("max_"):
        return float(used) > float(required)
    return used != required


def evaluation(reg: ModelRegistry, mv: ModelVersionInfo, report: str | None = None) -> Evaluation:
    """Whether ``mv``'s evaluation passes (see the module docstring for which one counts)."""
    labels = attached_reports(reg, mv)
    if not labels:
        return Evaluation(mv.ref, None, False, [
            f"{mv.ref} has no evaluation report attached; run `hounsfield evaluate {mv.ref} "
            "--dataset NAME --split test` (it attaches its report)"])
    if report is not None and report not in labels:
        return Evaluation(mv.ref, None, False, [
            f"{mv.ref} has no report {report!r} (attached: {', '.join(labels)})"])
    label = report or labels[0]
    path = reg.run_artifacts(mv.run_id) / "evaluation" / label / "report.json"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return Evaluation(mv.ref, label, False, [f"its report.json cannot be read ({exc})"])
    try:
        required, origin = recipe_targets(reg, mv)
    except HounsfieldError as exc:  # bundle missing or damaged: nothing to judge against
        return Evaluation(mv.ref, label, False, [exc.reason])
    used = data.get("targets") or {}
    problems = [f"the report was judged with {k} = {used.get(k)}, the recipe requires {want}"
                for k, want in (required or {}).items() if _looser(k, want, used.get(k))]
    for c in data.get("checks") or []:
        if not c.get("passed"):
            value = c.get("value")
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            problems.append(f"{c.get('name')} is {shown}, needs {c.get('op')} {c.get('target')}")
    if data.get("passed") is not True and not problems:
        problems.append("the report does not say passed")
    return Evaluation(mv.ref, label, not problems, problems, required or used, origin,
                      named=report is not None)


# -- history ----------------------------------------------------------------------------------

def history(reg: ModelRegistry, name: str) -> list[HistoryEntry]:
    """Every promotion, demotion and rollback of model ``name``, oldest first."""
    try:
        rm = reg.client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises its own RestException
        raise NotFound(f"no registered model named {name!r}") from None
    keys = sorted(k for k in (rm.tags or {}) if k.startswith(HISTORY_PREFIX))
    return [HistoryEntry.from_json(rm.tags[k]) for k in keys]


def _stack(entries: list[HistoryEntry], alias: str) -> list[str | None]:
    """The alias's holders as a stack (None: demoted); rollbacks pop as :func:`_pop` does."""
    stack: list[str | None] = []
    for e in entries:
        if e.alias != alias:
            continue
        if e.action == "promote":
            stack.append(e.to_version)
        elif e.action == "demote":
            stack.append(None)
        elif e.action == "rollback":
            stack, _ = _pop(stack, e.from_version)
    return stack


def _pop(stack: list[str | None], current: str | None) -> tuple[list[str | None], str | None]:
    """Drop the current holder (and demotions) from the top; the new top is the target."""
    stack = list(stack)
    while stack and (stack[-1] is None or stack[-1] == current):
        stack.pop()
    return stack, (stack[-1] if stack else None)


def current_holder(reg: ModelRegistry, name: str, alias: str) -> str | None:
    """The version the audited history put under ``alias`` last (None: never, or demoted)."""
    last = [e for e in history(reg, name) if e.alias == alias]
    return last[-1].to_version if last else None


def _append(reg: ModelRegistry, name: str, entry: HistoryEntry) -> None:
    key = f"{HISTORY_PREFIX}{int(time.time() * 1000):013d}.{secrets.token_hex(3)}"
    reg.client.set_registered_model_tag(name, key, entry.to_json())


# -- the three actions ------------------------------------------------------------------------

def _alias_version(reg: ModelRegistry, name: str, alias: str) -> str | None:
    try:
        return str(reg.client.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - MlflowException: alias not set
        return None


def _check(approver: Approver, alias: str, reason: str) -> None:
    if approver.role != ADMIN_ROLE:
        raise PermissionDenied(f"{approver.username!r} (role {approver.role or 'none'!r}) may "
                               f"not change model aliases: an admin approves models")
    ok, why = validate_alias(alias)
    if not ok:
        raise InvalidInput(why)
    if not reason.strip():
        raise InvalidInput("give a reason (it is kept in the model's history and the audit trail)")


_ACTIONS = {"promote": audit.Action.MODEL_PROMOTE, "demote": audit.Action.MODEL_DEMOTE,
            "rollback": audit.Action.MODEL_ROLLBACK}


def _audit(archive: Archive, action: str, approver: Approver, target: str, detail: str,
           outcome: audit.Outcome = audit.Outcome.SUCCESS) -> None:
    audit.record(archive, audit.Entry(
        _ACTIONS[action], actor=approver.username or "(unknown)", role=approver.role,
        source=approver.source, destination=target, outcome=outcome,
        detail=f"110131 Software Configuration: {detail}"[:2000]))


def _audited(archive: Archive, action: str, approver: Approver, target: str, run):  # noqa: ANN001, ANN202
    """Run ``run()``; audit its success, or its refusal with the reason, and re-raise."""
    try:
        entry, detail = run()
    except HounsfieldError as exc:
        outcome = (audit.Outcome.SERIOUS_FAILURE if isinstance(exc, PermissionDenied)
                   else audit.Outcome.MINOR_FAILURE)
        _audit(archive, action, approver, target, f"refused: {exc.reason}", outcome)
        raise
    _audit(archive, action, approver, target, detail)
    return entry


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _move(reg: ModelRegistry, action: str, mv: ModelVersionInfo, alias: str,
          current: str | None, approver: Approver, reason: str,
          report: str | None = None) -> tuple[HistoryEntry, Evaluation]:
    """Point the alias at ``mv`` if its evaluation passes; record the history entry."""
    ev = evaluation(reg, mv, report)
    if not ev.passed:
        what = (f"promotion of {mv.ref} to {mv.name}@{alias}" if action == "promote"
                else f"{action} of {mv.name}@{alias} to {mv.ref}")
        raise PromotionRefused(f"{what} refused: {ev.reason}")
    reg.client.set_registered_model_alias(mv.name, alias, mv.version)
    entry = HistoryEntry(action, alias, current, mv.version, approver.username, approver.role,
                         _now(), reason.strip(), approver.source, ev.label, mv.device_uid)
    _append(reg, mv.name, entry)
    return entry, ev


def promote(reg: ModelRegistry, archive: Archive, ref: str, *, approver: Approver, reason: str,
            alias: str = PRODUCTION, report: str | None = None) -> HistoryEntry:
    """Point ``NAME@ALIAS`` at version ``ref`` (``NAME@VERSION``) after checking the approver
    and the evaluation gate.  Raises :class:`PermissionDenied` (not an admin),
    :class:`PromotionRefused` (evaluation does not pass: the reason lists what failed),
    :class:`Conflict` (already there), :class:`InvalidInput` / :class:`NotFound` (bad ref)."""
    name = ref.partition("@")[0]

    def run() -> tuple[HistoryEntry, str]:
        _check(approver, alias, reason)
        _, sep, ver = ref.partition("@")
        if not name or not sep or not ver.isdigit():
            raise InvalidInput(f"promote names one version, NAME@VERSION (e.g. {name or 'nodules'}"
                               f"@3), not {ref!r}")
        mv = reg.resolve(ref)
        current = _alias_version(reg, name, alias)
        if current == mv.version:
            raise Conflict(f"{mv.ref} already is {name}@{alias}")
        entry, ev = _move(reg, "promote", mv, alias, current, approver, reason, report)
        return entry, (f"{mv.ref} -> {name}@{alias} (was {current or 'unset'}); report "
                       f"{ev.label} passed ({ev.targets_from}); reason: {reason.strip()}")

    return _audited(archive, "promote", approver, f"{name}@{alias}", run)


def demote(reg: ModelRegistry, archive: Archive, name: str, *, approver: Approver, reason: str,
           alias: str = PRODUCTION) -> HistoryEntry:
    """Remove ``NAME@ALIAS``: routing to it stops (jobs naming it fail with NotFound)."""

    def run() -> tuple[HistoryEntry, str]:
        _check(approver, alias, reason)
        _require_model(reg, name)
        current = _alias_version(reg, name, alias)
        if current is None:
            raise NotFound(f"model {name!r} has no alias {alias!r} to demote")
        reg.client.delete_registered_model_alias(name, alias)
        entry = HistoryEntry("demote", alias, current, None, approver.username, approver.role,
                             _now(), reason.strip(), approver.source)
        _append(reg, name, entry)
        return entry, f"{name}@{alias} removed (was {current}); reason: {reason.strip()}"

    return _audited(archive, "demote", approver, f"{name}@{alias}", run)


def rollback(reg: ModelRegistry, archive: Archive, name: str, *, approver: Approver, reason: str,
             alias: str = PRODUCTION) -> HistoryEntry:
    """Move ``NAME@ALIAS`` back to the version that held it before the current one (after a
    demotion: the demoted version).  That version's evaluation must still pass."""

    def run() -> tuple[HistoryEntry, str]:
        _check(approver, alias, reason)
        _require_model(reg, name)
        current = _alias_version(reg, name, alias)
        _, target = _pop(_stack(history(reg, name), alias), current)
        if target is None:
            raise NotFound(f"{name}@{alias} has no earlier version to roll back to "
                           f"(see `hounsfield models history {name}`)")
        mv = reg.resolve(f"{name}@{target}")
        entry, _ev = _move(reg, "rollback", mv, alias, current, approver, reason)
        return entry, (f"{name}@{alias} rolled back to {mv.ref} (was {current or 'unset'}); "
                       f"reason: {reason.strip()}")

    return _audited(archive, "rollback", approver, f"{name}@{alias}", run)


def _require_model(reg: ModelRegistry, name: str) -> None:
    if not reg.versions(name):
        raise NotFound(f"no registered model named {name!r}")


def resolve_for_routing(reg: ModelRegistry, ref: str) -> ModelVersionInfo:
    """The version a routing rule's ``NAME@ALIAS`` names, for clinical use.

    Refuses plain ``NAME`` ("latest"), ``NAME@latest`` and fixed ``NAME@VERSION`` refs
    (:class:`InvalidInput`), and an alias that was not set through an audited promotion
    (one set by hand in MLflow's UI) (:class:`NotFound`)."""
    name, sep, alias = ref.partition("@")
    if not name or not sep or alias in ("", "latest") or alias.isdigit():
        raise InvalidInput(f"routing rules name an alias such as {name or 'nodules'}"
                           f"@{PRODUCTION}, not {ref!r}: a rule never follows the latest "
                           "or a fixed version, only what an admin promoted")
    mv = reg.resolve(ref)
    approved = current_holder(reg, name, alias)
    if approved != mv.version:
        raise NotFound(f"{ref} points at version {mv.version}, which was not promoted "
                       f"through Hounsfield (its promotion history says "
                       f"{approved or 'nothing'}); promote it with `hounsfield models promote`")
    return mv


def operating_threshold(reg: ModelRegistry, mv: ModelVersionInfo,
                        alias: str = PRODUCTION) -> tuple[float | None, str | None]:
    """The probability threshold of the operating point of the evaluation that put ``mv``
    under ``alias`` (the report the promotion's history names), and that report's label.
    Clinical results show findings at or above it — the operating point the targets were
    checked at.  ``(None, None)`` when the history names no report or the report has none."""
    entries = [e for e in history(reg, mv.name) if e.alias == alias and e.to_version == mv.version
               and e.action in ("promote", "rollback")]
    label = entries[-1].report if entries else None
    if not label:
        return None, None
    path = reg.run_artifacts(mv.run_id) / "evaluation" / label / "report.json"
    try:
        report = json.loads(path.read_text())
        return float(report["operating_point"]["threshold"]), label
    except (OSError, ValueError, KeyError, TypeError):
        return None, label
