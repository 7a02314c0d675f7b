"""Plumbing shared by the DICOMweb routes: UID checks, Accept negotiation, JSON responses,
the base URL, and the per-request audit note the audit middleware reads."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response

from hounsfield.dicom.uids import is_lenient_uid
from hounsfield.dicomweb.multipart import parse_media_type, split_unquoted
from hounsfield.errors import HounsfieldError, InvalidInput, NotFound

DICOM_JSON = "application/dicom+json"
GZIP_MIN = 2048


class NotAcceptable(HounsfieldError):
    """No representation the client accepts can be produced (HTTP 406, PS3.18 §8.7.3)."""

    http_status = 406


class UnsupportedMediaType(HounsfieldError):
    """The request body's media type is not one we take (HTTP 415)."""

    http_status = 415


def check_uid(value: str, what: str) -> str:
    """Validate a UID from a path segment (lenient read rules); 400 with the reason otherwise."""
    if not is_lenient_uid(value):
        raise InvalidInput(f"{what} is not a UID (digits and dots, at most 64): {value[:80]!r}")
    return value


def base_url(request: Request) -> str:
    """``scheme://host[:port]/dicom-web`` as the client addressed us (``web.public_url`` wins).

    Some clients (dicomweb-client) send a Host header without the port; when no proxy header
    says otherwise, the port we listen on is put back so the URLs we return resolve.
    """
    public = request.app.state.archive.settings.web.public_url
    if public:
        return public.rstrip("/") + "/dicom-web"
    base = str(request.base_url).rstrip("/")
    host = request.headers.get("host", "")
    server = request.scope.get("server")
    if (host and ":" not in host.rsplit("]", 1)[-1] and server and server[1] not in (80, 443)
            and "x-forwarded-host" not in request.headers
            and "x-forwarded-proto" not in request.headers):
        base = f"{request.url.scheme}://{host}:{server[1]}"
    return base + "/dicom-web"


@dataclass
class AcceptItem:
    media: str
    params: dict[str, str]
    q: float


def parse_accept(header: str | None) -> list[AcceptItem]:
    """The Accept header's media ranges, best first (PS3.18 §8.7.1; RFC 9110 §12.5.1)."""
    if not header:
        return []
    items = []
    for raw in split_unquoted(header, ","):
        if not raw.strip():
            continue
        media, params = parse_media_type(raw)
        try:
            q = float(params.pop("q", "1") or 1)
        except ValueError:
            q = 1.0
        items.append(AcceptItem(media, params, q))
    return sorted(items, key=lambda i: -i.q)


def wants_json(request: Request) -> None:
    """406 unless the client accepts application/dicom+json (or JSON, or anything)."""
    items = parse_accept(request.headers.get("accept"))
    if not items:
        return
    ok = {"application/dicom+json", "application/json", "*/*", "application/*"}
    if not any(i.media in ok for i in items):
        raise NotAcceptable(
            "only application/dicom+json is offered here (DICOM XML is not supported); "
            f"Accept was {request.headers.get('accept')!r}"
        )


def json_response(request: Request, body: bytes | str, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """A DICOM JSON response, gzipped when the client accepts it (metadata shrinks ~50x)."""
    data = body.encode() if isinstance(body, str) else body
    hdrs = dict(headers or {})
    if len(data) >= GZIP_MIN and "gzip" in request.headers.get("accept-encoding", ""):
        data = gzip.compress(data, compresslevel=1)
        hdrs["Content-Encoding"] = "gzip"
        hdrs["Vary"] = "Accept-Encoding"
    return Response(data, status_code=status, media_type=DICOM_JSON, headers=hdrs)


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def not_found(what: str, uid: str) -> NotFound:
    return NotFound(f"{what} {uid} not found")


def note_audit(request: Request, *, study: str = "", patient: str = "", detail: str = "") -> None:
    """Tell the audit middleware which study/patient this request touched."""
    note = getattr(request.state, "audit", None) or {}
    if study and not note.get("study"):
        note["study"] = study
    if patient and not note.get("patient"):
        note["patient"] = patient
    if detail:
        note["detail"] = detail
    request.state.audit = note


def first(values: Iterable[str]) -> str:
    for v in values:
        return v
    return ""
