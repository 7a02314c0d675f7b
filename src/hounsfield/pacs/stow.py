"""STOW-RS client (PS3.18 10.5): POST archived instances to a DICOMweb service, one status per
instance from the response.

PS3.18 10.5.3: 200 = all stored; 202 = some stored, the rest in the Failed SOP Sequence
(0008,1198) with a Failure Reason (0008,1197); 409 = none stored (per-instance reasons where
given); 4xx / 5xx = the request failed as a whole.  Statuses recorded per instance: the DICOM
status from the response (0 = stored, a Warning Reason (0008,1196), a Failure Reason), or,
where the response has none for it, ``-<HTTP status>`` (e.g. ``-503``, ``-401``); ``-1`` when
the service could not be reached at all (connection refused, timeout).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from hounsfield.config import StowDestination
from hounsfield.dicom import status as st
from hounsfield.dicomweb.multipart import new_boundary, related_content_type, related_stream
from hounsfield.pacs.delivery import NO_ASSOCIATION, NOT_PREPARED, Item

log = logging.getLogger(__name__)

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
HTTP_REASONS = {
    401: "credentials refused (check the destination's username/password or token)",
    403: "access forbidden for these credentials",
    404: "no STOW-RS service at this URL (check the destination's url: the DICOMweb root)",
    408: "request timeout", 409: "conflict: the service stored none of the instances",
    413: "request too large (lower max_instances_per_request)",
    415: "media type not supported", 429: "too many requests",
}


@dataclass(frozen=True)
class Outgoing:
    sop_instance_uid: str
    study_instance_uid: str
    read: Callable[[], bytes]      # the Part 10 bytes, read when the batch is sent
    #: the transfer syntax ``read`` returns it in (a profile's first syntax; "" = as stored),
    #: named by the ``transfer-syntax`` parameter of the request's multipart/related type
    #: (PS3.18 §8.7.3 media type parameters)
    transfer_syntax: str = ""


def client(dest: StowDestination) -> httpx.Client:
    """An HTTP client with the destination's credentials, TLS verification and timeout."""
    auth: httpx.Auth | None = None
    headers = {"Accept": "application/dicom+json"}
    if dest.username is not None and dest.password is not None:
        auth = httpx.BasicAuth(dest.username, dest.password.get_secret_value())
    elif dest.token is not None:
        headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
    verify: bool | str = str(dest.ca_file) if dest.ca_file and dest.verify_tls else dest.verify_tls
    return httpx.Client(auth=auth, headers=headers, verify=verify,
                        timeout=httpx.Timeout(dest.timeout_s), follow_redirects=False)


def store(dest: StowDestination, objects: Sequence[Outgoing], attempt: int, *,
          on_batch: Callable[[list[Item]], None] | None = None) -> list[Item]:
    """POST ``objects`` to ``<url>/studies`` in batches; one :class:`Item` per object."""
    out: list[Item] = []
    n = dest.max_instances_per_request
    with client(dest) as http:
        for start in range(0, len(objects), n):
            batch = list(objects[start:start + n])
            items = _post(http, dest.url + "/studies", batch, attempt)
            out += items
            if on_batch:
                on_batch(items)
    return out


def _post(http: httpx.Client, url: str, batch: list[Outgoing], attempt: int) -> list[Item]:
    boundary = new_boundary()
    items: dict[str, Item] = {}
    parts: list[tuple[dict[str, str], bytes]] = []
    for o in batch:
        try:
            data = o.read()
        except Exception as exc:  # noqa: BLE001 - reported per instance, nothing sent for it
            reason = getattr(exc, "reason", None) or repr(exc)
            items[o.sop_instance_uid] = Item(o.sop_instance_uid, o.study_instance_uid,
                                             NOT_PREPARED, attempt, f"not sent: {reason}")
            continue
        # the parts stay plain application/dicom: Orthanc, for one, refuses a part whose
        # media type has parameters (415); the syntax is named on the multipart type
        parts.append(({"Content-Type": "application/dicom"}, data))
    sending = [o for o in batch if o.sop_instance_uid not in items]
    syntaxes = {o.transfer_syntax for o in sending}
    if sending:
        one = syntaxes.pop() if len(syntaxes) == 1 else ""
        headers = {"Content-Type": related_content_type(boundary, "application/dicom",
                                                        transfer_syntax=one)}
        try:
            r = http.post(url, content=b"".join(related_stream(boundary, parts)),
                          headers=headers)
        except httpx.HTTPError as exc:
            why = f"cannot reach {url}: {type(exc).__name__}: {exc}"
            return [items.get(o.sop_instance_uid) or
                    Item(o.sop_instance_uid, o.study_instance_uid, NO_ASSOCIATION, attempt, why)
                    for o in batch]
        items.update(_parse(r, sending, attempt))
    return [items[o.sop_instance_uid] for o in batch]


def _parse(r: httpx.Response, sending: list[Outgoing], attempt: int) -> dict[str, Item]:
    code = r.status_code
    stored, failed, parsed = _statuses(r)
    head = f"HTTP {code} {r.reason_phrase}".strip()
    out: dict[str, Item] = {}
    for o in sending:
        sop, study = o.sop_instance_uid, o.study_instance_uid
        if sop in failed:
            reason = failed[sop]
            out[sop] = Item(sop, study, reason, attempt,
                            f"{head}: Failure Reason 0x{reason:04X} ({st.name(reason)})")
        elif sop in stored and code < 300:
            warning = stored[sop]
            out[sop] = Item(sop, study, warning, attempt,
                            head + (f": Warning Reason 0x{warning:04X}" if warning else ""))
        elif code == 200 and not parsed:
            out[sop] = Item(sop, study, st.SUCCESS, attempt, head)  # 200: all stored
        elif code in (200, 202):
            out[sop] = Item(sop, study, -code, attempt,
                            f"{head}: the response does not mention this instance")
        else:
            text = HTTP_REASONS.get(code) or _body_excerpt(r)
            out[sop] = Item(sop, study, -code, attempt, f"{head} from {r.request.url}"
                            + (f": {text}" if text else ""))
    return out


def _statuses(r: httpx.Response) -> tuple[dict[str, int], dict[str, int], bool]:
    """(stored SOP -> warning reason or 0, failed SOP -> failure reason, body parsed)."""
    try:
        body = json.loads(r.content) if r.content else None
    except ValueError:
        return {}, {}, False
    if not isinstance(body, dict):
        return {}, {}, False

    def seq(tag: str, reason_tag: str, default: int) -> dict[str, int]:
        out = {}
        for item in (body.get(tag) or {}).get("Value") or []:
            if not isinstance(item, dict):
                continue
            uid = _first(item.get(REFERENCED_SOP_INSTANCE_UID))
            if uid:
                reason = _first(item.get(reason_tag))
                out[str(uid)] = int(reason) if isinstance(reason, int | float) else default
        return out

    stored = seq(REFERENCED_SOP_SEQUENCE, WARNING_REASON, st.SUCCESS)
    failed = seq(FAILED_SOP_SEQUENCE, FAILURE_REASON, st.PROCESSING_FAILURE)
    # a response that has the sequences, even empty, says which instances it stored: one it
    # does not list was not stored (Orthanc answers 200 with both sequences empty when it
    # ignored every part, e.g. a part type with parameters)
    return stored, failed, bool(stored or failed) or any(
        t in body for t in (REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE))


def _first(attr: object) -> object:
    if isinstance(attr, dict):
        values = attr.get("Value") or []
        return values[0] if values else None
    return None


def _body_excerpt(r: httpx.Response) -> str:
    text = r.text.strip().replace("\r", " ").replace("\n", " ")
    return text[:200]
