"""The console: server-rendered pages (Jinja2 + htmx, no build step).

Login, the study list with filters (htmx refreshes the table as you type), a study page with
its series, thumbnails and a link into OHIF, and the audit page for admins.  Study pages are
audited like the DICOMweb requests they stand for (QIDO for the list, VIEW for a study).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from hounsfield.archive import query as q
from hounsfield.audit import Action, Entry
from hounsfield.audit import query as audit_query
from hounsfield.errors import InvalidInput, NotFound, Unauthenticated
from hounsfield.web import auth
from hounsfield.web.api import login_and_audit, set_session_cookie
from hounsfield.web.deps import ArchiveDep, Auditor, MaybeUser, Reader, client_address
from hounsfield.web.pages import page, templates  # noqa: F401  (templates: app's error pages)
from hounsfield.web.viewer import default_viewer_dir

router = APIRouter(include_in_schema=False)

STUDY_FILTERS = {"patient_name": "PatientName", "patient_id": "PatientID",
                 "accession": "AccessionNumber", "modality": "ModalitiesInStudy",
                 "description": "StudyDescription"}


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/studies"


_page = page


@router.get("/")
def home(user: MaybeUser) -> Response:
    return RedirectResponse("/studies" if user else "/login", status_code=303)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
    return _page(request, "login.html", next=_safe_next(next), error="")


@router.post("/login")
def login_submit(request: Request, username: Annotated[str, Form(max_length=64)],
                 password: Annotated[str, Form(max_length=1024)],
                 next: Annotated[str, Form(max_length=2000)] = "/studies") -> Response:  # noqa: A002
    try:
        value, _user = login_and_audit(request, username, password)
    except Unauthenticated as exc:
        return _page(request, "login.html", status=401, next=_safe_next(next), error=exc.reason,
                     username=username)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(request, response, value)
    return response


@router.post("/logout")
def logout(request: Request, user: MaybeUser) -> Response:
    value = request.cookies.get(auth.SESSION_COOKIE)
    if value:
        auth.end_session(request.app.state.archive, value)
    if user is not None:
        request.app.state.audit.add(Entry(Action.LOGOUT, actor=user.username,
                                          role=user.role.value, source=client_address(request)))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


def _date_range(lo: str, hi: str) -> str:
    lo, hi = lo.replace("-", ""), hi.replace("-", "")
    return f"{lo}-{hi}" if (lo or hi) else ""


@router.get("/studies")
def studies(request: Request, archive: ArchiveDep, user: Reader, page: int = 0) -> Response:
    params = request.query_params
    filters = {key: params.get(name, "").strip() for name, key in STUDY_FILTERS.items()}
    filters = {k: v for k, v in filters.items() if v}
    if filters.get("PatientName") and "*" not in filters["PatientName"]:
        filters["PatientName"] = filters["PatientName"] + "*"
    dates = _date_range(params.get("date_from", ""), params.get("date_to", ""))
    if dates:
        filters["StudyDate"] = dates
    size = 50
    page = max(0, min(page, 10**6))
    error = ""
    rows = []
    try:
        with archive.session() as s:
            found = q.find_studies(s, filters, limit=size + 1, offset=page * size,
                                   case_insensitive_pn=True)
            counts = q.study_counts(s, [st.id for st in found[:size]])
            rows = [(st, counts[st.id]) for st in found[:size]]
            more = len(found) > size
    except InvalidInput as exc:
        error, more = exc.reason, False
    request.app.state.audit.add(Entry(Action.QIDO, actor=user.username, role=user.role.value,
                                      source=client_address(request), destination="console",
                                      detail=f"console study list {filters}"[:500]))
    query = {k: v for k, v in params.items() if k != "page"}
    context = {"rows": rows, "page": page, "more": more, "error": error, "params": params,
               "prev_url": "/studies?" + urlencode({**query, "page": page - 1}),
               "next_url": "/studies?" + urlencode({**query, "page": page + 1})}
    if request.headers.get("hx-request"):
        return _page(request, "_study_rows.html", **context)
    return _page(request, "studies.html", **context)


@router.get("/studies/{study_uid}")
def study_page(study_uid: str, request: Request, archive: ArchiveDep, user: Reader) -> Response:
    with archive.session() as s:
        study = q.get_study(s, study_uid[:64])
        if study is None:
            raise NotFound(f"study {study_uid[:64]} not found")
        series = q.find_series(s, {"StudyInstanceUID": study_uid})
        counts = q.series_counts(s, [se.id for se in series])
    request.app.state.audit.add(Entry(Action.VIEW, actor=user.username, role=user.role.value,
                                      source=client_address(request), destination="console",
                                      study_instance_uid=study_uid,
                                      patient_id=study.patient.patient_id,
                                      detail="console study page"))
    from hounsfield.web.jobs_web import study_ai_results

    return _page(request, "study.html", study=study, series=series, counts=counts,
                 viewer_url=f"/viewer/viewer?StudyInstanceUIDs={study.study_instance_uid}",
                 ai_jobs=study_ai_results(archive, study.study_instance_uid),
                 can_run_ai=user.can(auth.Permission.AI_RUN),
                 routed=request.query_params.get("routed", "")[:32])


@router.get("/audit")
def audit_page(request: Request, archive: ArchiveDep, user: Auditor) -> Response:
    params = request.query_params
    filters = {k: params.get(k, "").strip() for k in ("action", "actor", "study_instance_uid",
                                                      "outcome")}
    filters = {k: v for k, v in filters.items() if v}
    error = ""
    if "outcome" in filters and filters["outcome"] not in ("0", "4", "8", "12"):
        error = "outcome is one of 0, 4, 8, 12"
        filters.pop("outcome")
    request.app.state.audit.flush()
    with archive.session() as s:
        events = audit_query(s, filters, limit=500)
    return _page(request, "audit.html", events=events, params=params, error=error,
                 actions=[a.value for a in Action])


@router.get("/static/htmx.min.js")
def htmx() -> Response:
    path = default_viewer_dir().parent / "htmx" / "htmx.min.js"
    if not path.is_file():
        # the console works without it (plain forms and links); setup.sh fetches it
        return Response("/* htmx not installed: run scripts/setup.sh */",
                        media_type="text/javascript")
    return FileResponse(path, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})
