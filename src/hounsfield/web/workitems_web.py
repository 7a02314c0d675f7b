"""The worklist in the console: ``/workitems`` (what hospital systems asked for by UPS-RS, its
state, progress, cancellation requests and the AI job performing it) and ``/api/workitems``
(the same as JSON).  Reading needs ``studies:read``, like the UPS-RS Search it summarises."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from hounsfield.deploy.models import UPS_STATES
from hounsfield.deploy.ups_list import list_workitems, workitem_dict
from hounsfield.web.deps import ArchiveDep, Reader
from hounsfield.web.pages import page

api = APIRouter(prefix="/api", tags=["UPS-RS"])
pages = APIRouter(include_in_schema=False)


@api.get("/workitems", summary="UPS workitems, newest first (filter by state, study)")
def workitems_list(archive: ArchiveDep, user: Reader, state: str | None = None,
                   study: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    return [workitem_dict(r) for r in list_workitems(archive, state=state, study_uid=study,
                                                     limit=limit)]


@pages.get("/workitems")
def workitems_page(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    state = request.query_params.get("state", "").strip() or None
    rows = [workitem_dict(r) for r in list_workitems(archive, state=state, limit=200)]
    return page(request, "workitems.html", items=rows, state=state or "", states=UPS_STATES)
