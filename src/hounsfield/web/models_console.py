"""The console's models page: every model's versions with evaluation pass/fail, aliases and
Device UIDs, the promotion history, and (admins) approve → production, demote and roll back.

Plain HTML forms (they work without htmx).  The registry checks the role and audits every
attempt; a refused promotion re-renders the page with the reason (HTTP 409 / 403 / 400)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from hounsfield.errors import HounsfieldError
from hounsfield.registry import approval
from hounsfield.registry.mlflow_registry import PRODUCTION
from hounsfield.web.console import templates
from hounsfield.web.deps import ArchiveDep, CurrentUser, Reader
from hounsfield.web.models_api import RegistryDep, approver, overview

router = APIRouter(include_in_schema=False)
ReasonForm = Annotated[str, Form(min_length=1, max_length=2000)]
AliasForm = Annotated[str, Form(max_length=63)]


def _models_page(request: Request, reg, *, status: int = 200, error: str = "",  # noqa: ANN001
                 notice: str = "") -> Response:
    return templates.TemplateResponse(
        request, "models.html",
        {"models": overview(reg, with_history=True), "error": error, "notice": notice,
         "user": getattr(request.state, "principal", None)}, status_code=status)


@router.get("/models")
def models_page(request: Request, reg: RegistryDep, user: Reader, notice: str = "") -> Response:
    return _models_page(request, reg, notice=notice[:300])


def _act(request: Request, reg, run) -> Response:  # noqa: ANN001
    try:
        e = run()
    except HounsfieldError as exc:
        return _models_page(request, reg, status=exc.http_status, error=exc.reason)
    note = f"{e.action}: {e.alias} {e.from_version or '–'} → {e.to_version or '–'}"
    return RedirectResponse(f"/models?notice={quote(note)}", status_code=303)


@router.post("/models/{name}/promote")
def promote(name: str, request: Request, reg: RegistryDep, archive: ArchiveDep,
            user: CurrentUser, version: Annotated[str, Form(max_length=9)],
            reason: ReasonForm, alias: AliasForm = PRODUCTION) -> Response:
    return _act(request, reg, lambda: approval.promote(
        reg, archive, f"{name}@{version}", approver=approver(request, user), reason=reason,
        alias=alias))


@router.post("/models/{name}/demote")
def demote(name: str, request: Request, reg: RegistryDep, archive: ArchiveDep,
           user: CurrentUser, reason: ReasonForm, alias: AliasForm = PRODUCTION) -> Response:
    return _act(request, reg, lambda: approval.demote(
        reg, archive, name, approver=approver(request, user), reason=reason, alias=alias))


@router.post("/models/{name}/rollback")
def rollback(name: str, request: Request, reg: RegistryDep, archive: ArchiveDep,
             user: CurrentUser, reason: ReasonForm, alias: AliasForm = PRODUCTION) -> Response:
    return _act(request, reg, lambda: approval.rollback(
        reg, archive, name, approver=approver(request, user), reason=reason, alias=alias))
