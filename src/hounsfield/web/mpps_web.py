"""Modality Performed Procedure Steps on the web: ``/api/mpps`` (JSON) and the console's MPPS
page (state, study link, what the trigger did; mismatches highlighted with the missing count).
Reading needs ``studies:read`` (the Reader permission), as the studies do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from hounsfield.errors import NotFound
from hounsfield.ingest.mpps import get_mpps, list_mpps, mpps_dict
from hounsfield.web.deps import ArchiveDep, Reader
from hounsfield.web.pages import page

api = APIRouter(prefix="/api", tags=["MPPS"])
pages = APIRouter(include_in_schema=False)


@api.get("/mpps", summary="performed procedure steps, newest first (filter by state, trigger "
                          "state, study)")
def mpps_list(archive: ArchiveDep, user: Reader, state: str | None = None,
              trigger_state: str | None = None, study: str | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
    return [mpps_dict(r) for r in list_mpps(archive, state=state, trigger_state=trigger_state,
                                            study_uid=study, limit=limit)]


@api.get("/mpps/{sop_instance_uid}", summary="one performed procedure step with its data set")
def mpps_one(sop_instance_uid: str, archive: ArchiveDep, user: Reader) -> dict[str, Any]:
    row = get_mpps(archive, sop_instance_uid[:64])
    if row is None:
        raise NotFound(f"no MPPS {sop_instance_uid[:64]}")
    return mpps_dict(row, with_dataset=True)


@pages.get("/mpps")
def mpps_page(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    state = request.query_params.get("state", "").strip() or None
    trigger = request.query_params.get("trigger_state", "").strip() or None
    rows = list_mpps(archive, state=state, trigger_state=trigger, limit=200)
    return page(request, "mpps.html", steps=rows, state=state or "", trigger_state=trigger or "",
                mismatches=sum(1 for r in rows if r.trigger_state == "mismatch"))
