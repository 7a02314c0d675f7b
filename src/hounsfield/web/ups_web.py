"""UPS-RS (the Worklist Service, PS3.18 §11) under ``/dicom-web/workitems``, and the WebSocket
event channel ``/dicom-web/subscribers/{aetitle}`` (PS3.18 §11.10: the Content-Location of a
Subscribe answer points to it).

Thin HTTP edge over :mod:`hounsfield.deploy.ups`: read the body, check the media type, call
the manager in a worker thread, translate a refusal into its HTTP status with the PS3.18
``Warning: 299`` text and a JSON body ``{"error", "status", "meaning"}`` (the DICOM status as
4 hex digits).  Payloads are DICOM JSON (``application/dicom+json``; ``application/json`` is
read too); the XML media type is not supported (406).

Roles: Retrieve, Search, Subscribe and the event channel need ``studies:read``; Create and
Request Cancellation ``ai:run`` (asking for work); Update and Change State ``studies:write``
(performing it).  Every request is audited by the DICOMweb audit middleware (action UPS) and
every accepted change again by the manager.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from hounsfield.audit.principal import Permission
from hounsfield.deploy import ups
from hounsfield.errors import HounsfieldError
from hounsfield.web.deps import AiOperator, ArchiveDep, Reader, Writer

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicom-web", tags=["UPS-RS"])
DICOM_JSON = "application/dicom+json"
_JSON_TYPES = ("application/dicom+json", "application/json")
#: how often an open event channel looks for new Event Reports in the database
EVENT_POLL_S = 0.2


def _warning(text: str) -> str:
    return f'299 hounsfield: {text}'


def _refused(request: Request, exc: HounsfieldError) -> Response:
    code = getattr(exc, "dicom_status", 0xC000)
    request.state.error = exc.reason[:500]
    headers = {}
    if getattr(exc, "warning", ""):
        headers["Warning"] = _warning(exc.warning)
    return JSONResponse({"error": exc.reason, "status": f"{code:04X}",
                         "meaning": ups.STATUS_MEANING.get(code, "")},
                        status_code=exc.http_status, headers=headers)


def _ok(status: int, answer: ups.Answer | None = None, headers: dict | None = None,
        body: Any = None) -> Response:
    headers = dict(headers or {})
    if answer is not None and answer.warnings:
        headers["Warning"] = ", ".join(_warning(t) for _c, t in answer.warnings)
    if body is None:
        return Response(status_code=status, headers=headers)
    return Response(json.dumps(body), status_code=status, headers=headers,
                    media_type=DICOM_JSON)


async def _call(request: Request, fn, *args, **kw) -> Any:  # noqa: ANN001
    return await run_in_threadpool(fn, *args, **kw)


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    kinds = [a.split(";")[0].strip().lower() for a in accept.split(",")]
    if not any(k in (*_JSON_TYPES, "*/*", "application/*") for k in kinds):
        raise ups.UpsRefused(0xC000, 406, f"cannot answer in {accept!r}: the workitems are "
                             f"served as {DICOM_JSON}")


async def _json_body(request: Request, *, optional: bool = False) -> Any:
    raw = await request.body()
    if optional and not raw.strip():
        return None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _JSON_TYPES:
        raise ups.UpsRefused(0xC000, 415, f"Content-Type must be {DICOM_JSON}, got "
                             f"{ctype or 'none'!r}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ups.UpsRefused(0x0106, 400, f"the body is not JSON: {exc}") from None


def _bare_query(request: Request, name: str) -> str | None:
    """``?{uid}`` (the URI templates of PS3.18 §11.4 and §11.6) or ``?name=uid``."""
    query = request.url.query
    if not query:
        return None
    if "=" not in query:
        return query.strip()
    return dict(parse_qsl(query)).get(name)


def _actor(user) -> str:  # noqa: ANN001
    return user.username


@router.post("/workitems", summary="Create Workitem (PS3.18 §11.4)", status_code=201)
async def create_workitem(request: Request, archive: ArchiveDep, user: AiOperator) -> Response:
    try:
        _check_accept(request)
        body = await _json_body(request)
        answer = await _call(request, ups.create, archive, body,
                             uid=_bare_query(request, "workitem"), actor=_actor(user),
                             worklist_label=archive.settings.dicom.ae_title)
    except HounsfieldError as exc:
        return _refused(request, exc)
    request.state.audit = {"detail": f"workitem {answer.uid} created"}
    return _ok(201, answer, {"Location": str(request.url_for("retrieve_workitem",
                                                             workitem=answer.uid))})


@router.get("/workitems", summary="Search for Workitems (PS3.18 §11.9)")
async def search_workitems(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    try:
        _check_accept(request)
        params, limit, offset = [], None, 0
        for k, v in request.query_params.multi_items():
            if k == "limit":
                limit = _int(k, v)
            elif k == "offset":
                offset = _int(k, v)
            elif k in ("includefield", "fuzzymatching"):
                continue  # every attribute is returned; matching is exact or wildcard
            else:
                params.append((k, v))
        found = await _call(request, ups.search, archive, params, limit=limit, offset=offset)
    except HounsfieldError as exc:
        return _refused(request, exc)
    if not found:
        return Response(status_code=204)
    return _ok(200, body=found)


def _int(name: str, v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise ups.UpsRefused(0x0106, 400, f"{name} must be a whole number, got {v!r}") from None
    if n < 0:
        raise ups.UpsRefused(0x0106, 400, f"{name} must not be negative")
    return n


@router.get("/workitems/{workitem}", summary="Retrieve Workitem (PS3.18 §11.5)")
async def retrieve_workitem(workitem: str, request: Request, archive: ArchiveDep,
                            user: Reader) -> Response:
    try:
        _check_accept(request)
        ds = await _call(request, ups.get, archive, workitem)
    except HounsfieldError as exc:
        return _refused(request, exc)
    return _ok(200, body=[ds])


@router.post("/workitems/{workitem}", summary="Update Workitem (PS3.18 §11.6)")
async def update_workitem(workitem: str, request: Request, archive: ArchiveDep,
                          user: Writer) -> Response:
    try:
        body = await _json_body(request)
        answer = await _call(request, ups.update, archive, workitem, body,
                             transaction_uid=_bare_query(request, "transaction-uid"),
                             actor=_actor(user))
    except HounsfieldError as exc:
        return _refused(request, exc)
    return _ok(200, answer)


@router.put("/workitems/{workitem}/state", summary="Change Workitem State (PS3.18 §11.7)")
async def change_workitem_state(workitem: str, request: Request, archive: ArchiveDep,
                                user: Writer) -> Response:
    try:
        body = await _json_body(request)
        answer = await _call(request, ups.change_state, archive, workitem, body,
                             actor=_actor(user))
    except HounsfieldError as exc:
        return _refused(request, exc)
    request.state.audit = {"detail": f"workitem {workitem} is {answer.state}"}
    return _ok(200, answer)


@router.post("/workitems/{workitem}/cancelrequest",
             summary="Request Cancellation (PS3.18 §11.8)", status_code=202)
async def request_cancellation(workitem: str, request: Request, archive: ArchiveDep,
                               user: AiOperator) -> Response:
    try:
        body = await _json_body(request, optional=True)
        answer = await _call(request, ups.request_cancel, archive, workitem, body,
                             actor=_actor(user))
    except HounsfieldError as exc:
        return _refused(request, exc)
    return _ok(202, answer)


def _channel_url(request: Request, ae: str) -> str:
    url = str(request.url_for("event_channel", aetitle=ae))
    return "ws" + url[4:] if url.startswith("http") else url


@router.post("/workitems/{workitem}/subscribers/{aetitle}",
             summary="Subscribe (PS3.18 §11.10): a workitem, the Worklist "
                     f"({ups.GLOBAL_SUBSCRIPTION_UID}) or the Filtered Worklist "
                     f"({ups.FILTERED_SUBSCRIPTION_UID}, with filter=)", status_code=201)
async def subscribe(workitem: str, aetitle: str, request: Request, archive: ArchiveDep,
                    user: Reader, deletionlock: str = "false",
                    filter: str | None = None) -> Response:  # noqa: A002 - PS3.18's name
    try:
        if deletionlock.lower() not in ("true", "false"):
            raise ups.UpsRefused(0x0106, 400, f"deletionlock must be true or false, got "
                                 f"{deletionlock!r}")
        if filter is not None and workitem != ups.FILTERED_SUBSCRIPTION_UID:
            raise ups.UpsRefused(0x0106, 400, "filter= is only for the Filtered Worklist "
                                 f"({ups.FILTERED_SUBSCRIPTION_UID})")
        await _call(request, ups.subscribe, archive, workitem, aetitle,
                    deletion_lock=deletionlock.lower() == "true", filter_text=filter,
                    actor=_actor(user))
    except HounsfieldError as exc:
        return _refused(request, exc)
    return _ok(201, headers={"Content-Location": _channel_url(request, aetitle.strip())})


@router.delete("/workitems/{workitem}/subscribers/{aetitle}",
               summary="Unsubscribe (PS3.18 §11.11)")
async def unsubscribe(workitem: str, aetitle: str, request: Request, archive: ArchiveDep,
                      user: Reader) -> Response:
    try:
        await _call(request, ups.unsubscribe, archive, workitem, aetitle, actor=_actor(user))
    except HounsfieldError as exc:
        return _refused(request, exc)
    return _ok(200)


@router.post("/workitems/{workitem}/subscribers/{aetitle}/suspend",
             summary="Suspend Global Subscription (PS3.18 §11.12)")
async def suspend(workitem: str, aetitle: str, request: Request, archive: ArchiveDep,
                  user: Reader) -> Response:
    try:
        if workitem not in (ups.GLOBAL_SUBSCRIPTION_UID, ups.FILTERED_SUBSCRIPTION_UID):
            raise ups.UpsRefused(0x0106, 400, "only a Worklist subscription "
                                 f"({ups.GLOBAL_SUBSCRIPTION_UID}) can be suspended")
        await _call(request, ups.suspend, archive, aetitle, actor=_actor(user))
    except HounsfieldError as exc:
        return _refused(request, exc)
    return _ok(200)


def _ws_principal(websocket: WebSocket):  # noqa: ANN202
    """The caller of a WebSocket handshake (the HTTP authentication gate sees only HTTP)."""
    for authenticator in websocket.app.state.authenticators:
        principal = authenticator.authenticate(websocket)
        if principal is not None:
            return principal
    return None


@router.websocket("/subscribers/{aetitle}", name="event_channel")
async def event_channel(websocket: WebSocket, aetitle: str) -> None:
    """The Notification Connection of ``aetitle``: every Event Report queued for it (by any
    process) is sent as one text message, a DICOM JSON data set with Affected SOP Instance UID
    (00001000) and Event Type ID (00001002), oldest first; a report is marked delivered once
    sent, so one queued while the AE was away comes when it reconnects."""
    archive = websocket.app.state.archive
    try:
        principal = await run_in_threadpool(_ws_principal, websocket)
    except HounsfieldError:
        principal = None
    try:
        ae = ups.check_ae(aetitle)
    except HounsfieldError:
        ae = ""
    if principal is None or not principal.can(Permission.READ) or not ae:
        await websocket.close(code=1008)  # refuses the handshake (HTTP 403)
        return
    await websocket.accept()
    await run_in_threadpool(ups.audit, archive, principal.username,
                            f"event channel of {ae} opened")
    try:
        while True:
            events = await run_in_threadpool(ups.pending_events, archive, ae)
            for event_id, payload in events:
                await websocket.send_text(json.dumps(payload))
                await run_in_threadpool(ups.mark_delivered, archive, [event_id])
            if events:
                continue
            try:
                msg = await asyncio.wait_for(websocket.receive(), timeout=EVENT_POLL_S)
            except asyncio.TimeoutError:
                continue
            if msg["type"] == "websocket.disconnect":
                return
    except WebSocketDisconnect:
        return
    except Exception as exc:  # noqa: BLE001 - one broken channel never stops the server
        log.warning("event channel of %s closed: %s", ae, exc)
        try:
            await websocket.close(code=1011)
        except Exception:  # noqa: BLE001
            pass
