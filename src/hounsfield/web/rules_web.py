"""Routing rules on the web: ``/api/rules`` (read, validate, replace) and the console's rules
page (the file, each rule in the order it is tried, an editor for admins, and "explain" for a
study).  Reading needs ``studies:read``; replacing the rules is an admin's (``users:manage``)
and is audited with the old and new rule names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Form, Request
from starlette.responses import Response

from hounsfield.audit import Action, Entry
from hounsfield.deploy import rules_store
from hounsfield.deploy.pipeline import explain
from hounsfield.errors import HounsfieldError, InvalidInput
from hounsfield.web.deps import ArchiveDep, Reader, UserAdmin, client_address
from hounsfield.web.pages import page

api = APIRouter(prefix="/api", tags=["Routing rules"])
pages = APIRouter(include_in_schema=False)


def _rule_dicts(rules) -> list[dict[str, Any]]:  # noqa: ANN001
    return [r.model_dump(mode="json") for r in rules.ordered()]


def _problems(exc: HounsfieldError) -> list[str]:
    return exc.detail if isinstance(exc.detail, list) and exc.detail else [exc.reason]


@api.get("/rules", summary="the routing rules in force (file text and parsed rules)")
def get_rules(archive: ArchiveDep, user: Reader) -> dict[str, Any]:
    path, text = rules_store.read(archive.settings)
    rules = rules_store.check(archive.settings, text, source=str(path)) if text else None
    return {"path": str(path), "text": text, "rules": _rule_dicts(rules) if rules else []}


@api.post("/rules/validate", summary="check a rules file without installing it")
def validate_rules(archive: ArchiveDep, user: Reader,
                   text: Annotated[str, Body(media_type="text/plain")]) -> dict[str, Any]:
    try:
        rules = rules_store.check(archive.settings, text)
    except InvalidInput as exc:
        return {"valid": False, "problems": _problems(exc)}
    return {"valid": True, "problems": [], "rules": _rule_dicts(rules)}


@api.put("/rules", summary="replace the routing rules (admins); 400 lists every problem")
def put_rules(request: Request, archive: ArchiveDep, admin: UserAdmin,
              text: Annotated[str, Body(media_type="text/plain")]) -> dict[str, Any]:
    rules = _replace(request, archive, admin, text)
    return {"path": str(rules_store.read(archive.settings)[0]), "rules": _rule_dicts(rules)}


def _replace(request: Request, archive, admin, text: str):  # noqa: ANN001, ANN202
    rules = rules_store.replace(archive.settings, text)
    request.app.state.audit.add(Entry(
        Action.AI_JOB, actor=admin.username, role=admin.role.value,
        source=client_address(request), destination="routing rules",
        detail="rules replaced: " + ", ".join(r.name for r in rules.rules)))
    return rules


@pages.get("/rules")
def rules_page(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    return _rules_page(request, archive, user, study=request.query_params.get("study", ""))


def _rules_page(request: Request, archive, user, *, study: str = "", text: str | None = None,  # noqa: ANN001
                problems: list[str] | None = None, saved: bool = False,
                status: int = 200) -> Response:
    path, current = rules_store.read(archive.settings)
    rules, load_problems = None, []
    if current:
        try:
            rules = rules_store.check(archive.settings, current, source=str(path))
        except InvalidInput as exc:
            load_problems = _problems(exc)
    decision: list[str] = []
    if study.strip():
        try:
            decision = explain(archive, study.strip()[:64])
        except HounsfieldError as exc:
            decision = [f"error: {exc.reason}"]
    from hounsfield.audit.principal import Permission

    return page(request, "rules.html", status=status, path=str(path),
                text=current if text is None else text, rules=rules.ordered() if rules else [],
                load_problems=load_problems, problems=problems or [], saved=saved,
                study=study, decision=decision, can_edit=user.can(Permission.USERS))


@pages.post("/rules")
def rules_save(request: Request, archive: ArchiveDep, admin: UserAdmin,
               text: Annotated[str, Form(max_length=1_000_000)]) -> Response:
    try:
        _replace(request, archive, admin, text.replace("\r\n", "\n"))
    except InvalidInput as exc:
        return _rules_page(request, archive, admin, text=text, problems=_problems(exc),
                           status=400)
    return _rules_page(request, archive, admin, saved=True)
