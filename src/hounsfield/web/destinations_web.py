"""Export destinations on the web: ``/api/destinations`` (each destination, its profile, the
effective settings and the last pre-flight) and the console's destinations page, with a
"Run pre-flight" button per destination.  Reading needs ``studies:read``; running a pre-flight
(one association that proposes the profile's SOP classes and sends nothing) is an admin's
(``users:manage``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from hounsfield.audit.principal import Permission
from hounsfield.pacs import preflight
from hounsfield.pacs.export import destination
from hounsfield.web.deps import ArchiveDep, Reader, UserAdmin
from hounsfield.web.pages import page

api = APIRouter(prefix="/api", tags=["Export destinations"])
pages = APIRouter(include_in_schema=False)


@api.get("/destinations", summary="export destinations, effective profiles, last pre-flight")
def destinations(archive: ArchiveDep, user: Reader) -> list[dict[str, Any]]:
    return preflight.overview(archive)


@api.post("/destinations/{name}/preflight",
          summary="run the pre-flight check of one destination now (404: unknown destination)")
def run_preflight(name: str, archive: ArchiveDep, admin: UserAdmin) -> dict[str, Any]:
    _known(archive, name)
    return preflight.run(archive, name[:64], actor=admin.username).as_dict()


def _known(archive, name: str) -> None:  # noqa: ANN001
    from hounsfield.errors import InvalidInput, NotFound

    try:
        destination(archive.settings, name[:64])
    except InvalidInput as exc:
        raise NotFound(exc.reason) from None


@pages.get("/destinations")
def destinations_page(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    return page(request, "destinations.html", destinations=preflight.overview(archive),
                checked=request.query_params.get("checked", "")[:64],
                can_check=user.can(Permission.USERS))


@pages.post("/destinations/{name}/preflight")
def destinations_preflight(name: str, archive: ArchiveDep, admin: UserAdmin) -> Response:
    _known(archive, name)
    preflight.run(archive, name[:64], actor=admin.username)
    return RedirectResponse(f"/destinations?checked={name[:64]}", status_code=303)
