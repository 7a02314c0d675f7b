"""STOW-RS store (PS3.18 §10.5): multipart/related application/dicom in, DICOM JSON out.

The same write path and durability rule as C-STORE: each part is parsed with
:func:`~hounsfield.archive.parse.parse_part10`, the batch is stored with
:func:`~hounsfield.archive.store.store_instances` (blobs fsynced, rows committed), and only then
is the response sent.  Status (PS3.18 §10.5.3, Table 10.5.3-1): 200 all stored, 202 some stored
and some failed (or stored with warnings), 409 none stored; 400 for a body that cannot be
split into parts, 413 over ``http.max_body_mb``, 415 for a media type other than
application/dicom.

FailureReason values (PS3.4 Annex B.2.3 / PS3.18 Table 10.5.3-2): 0xC000 cannot understand
(not DICOM / unreadable), 0xA900 data set does not match (study UID of the path, SOP class),
0x0111 duplicate SOPInstanceUID with different content (the first copy is kept),
0xA700 out of resources.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hounsfield.archive.archive import Archive
from hounsfield.archive.parse import ParsedInstance, parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.dicomweb.common import (
    UnsupportedMediaType,
    base_url,
    check_uid,
    dumps,
    json_response,
    note_audit,
)
from hounsfield.dicomweb.deps import ArchiveDep, Writer
from hounsfield.dicomweb.multipart import parse_media_type, parse_related
from hounsfield.errors import InvalidDicom, InvalidInput, OutOfResources, PayloadTooLarge

router = APIRouter()

CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900
DUPLICATE = 0x0111
OUT_OF_RESOURCES = 0xA700


async def read_limited(request: Request, limit_bytes: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit_bytes:
                raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds the limit "
                                      f"of {limit_bytes} bytes (http.max_body_mb)")
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes "
                                  "(http.max_body_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _failed(sop_class: str, sop: str, reason: int, comment: str) -> dict:
    item = {"00081150": {"vr": "UI"}, "00081155": {"vr": "UI"},
            "00081197": {"vr": "US", "Value": [reason]}}
    if sop_class:
        item["00081150"]["Value"] = [sop_class]
    if sop:
        item["00081155"]["Value"] = [sop]
    # the reason in words: ErrorComment is the DIMSE way of saying it; clients show it
    item["00000902"] = {"vr": "LO", "Value": [comment[:64]]}
    return item


def _store(archive: Archive, parts: list, study: str | None, source: str, base: str) -> tuple:
    referenced: list[dict] = []
    failed: list[dict] = []
    parsed: list[ParsedInstance] = []
    warnings = 0
    for n, part in enumerate(parts, start=1):
        media, _params = parse_media_type(part.content_type or "application/dicom")
        if media != "application/dicom":
            failed.append(_failed("", "", CANNOT_UNDERSTAND,
                                  f"part {n}: {media} is not application/dicom"))
            continue
        try:
            p = parse_part10(part.body, name=f"part {n}")
        except InvalidDicom as exc:
            failed.append(_failed("", "", CANNOT_UNDERSTAND, exc.reason))
            continue
        if study is not None and p.study_instance_uid != study:
            failed.append(_failed(p.instance["sop_class_uid"], p.sop_instance_uid, MISMATCH,
                                  "StudyInstanceUID differs from the one in the URL"))
            continue
        parsed.append(p)
    studies: list[str] = []
    if parsed:
        try:
            outcomes = store_instances(archive, parsed, source=source)
        except OutOfResources as exc:
            for p in parsed:
                failed.append(_failed(p.instance["sop_class_uid"], p.sop_instance_uid,
                                      OUT_OF_RESOURCES, exc.reason))
            outcomes = []
        for p, o in zip(parsed, outcomes, strict=False):
            if o.status == "conflict":
                failed.append(_failed(p.instance["sop_class_uid"], o.sop_instance_uid,
                                      DUPLICATE, o.reason))
                continue
            item = {
                "00081150": {"vr": "UI", "Value": [p.instance["sop_class_uid"]]},
                "00081155": {"vr": "UI", "Value": [o.sop_instance_uid]},
                "00081190": {"vr": "UR", "Value": [
                    f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}"
                    f"/instances/{o.sop_instance_uid}"]},
            }
            referenced.append(item)
            if o.study_instance_uid not in studies:
                studies.append(o.study_instance_uid)
    return referenced, failed, studies, warnings


async def _stow(request: Request, archive: Archive, study: str | None) -> Response:
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    ctype = request.headers.get("content-type", "")
    media, params = parse_media_type(ctype)
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", got {media or 'none'!r}"
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type not in ("application/dicom", ""):
        raise UnsupportedMediaType(f"only application/dicom parts are supported (type={part_type!r});"
                                   " DICOM JSON + bulk data STOW is not")
    limit = archive.settings.http.max_body_mb * 1024 * 1024
    body = await read_limited(request, limit)
    _type, parts = parse_related(body, ctype)
    if not parts:
        raise InvalidInput("the multipart body has no parts")
    source = f"STOW@{request.client.host if request.client else ''}"
    base = base_url(request)
    referenced, failed, studies, warnings = await run_in_threadpool(
        _store, archive, parts, study, source, base)
    result: dict[str, dict] = {}
    if studies:
        retrieve = f"{base}/studies/{study or studies[0]}"
        result["00081190"] = {"vr": "UR", "Value": [retrieve]}
    result["00081199"] = {"vr": "SQ", "Value": referenced} if referenced else {"vr": "SQ"}
    if failed:
        result["00081198"] = {"vr": "SQ", "Value": failed}
    if not referenced:
        status = 409
    elif failed or warnings:
        status = 202
    else:
        status = 200
    note_audit(request, study=study or (studies[0] if studies else ""),
               detail=f"{len(referenced)} stored, {len(failed)} failed"
                      + (f", studies {' '.join(studies)}" if len(studies) > 1 else ""))
    return json_response(request, dumps(result), status=status)


@router.post("/studies", summary="STOW-RS: store instances (PS3.18 §10.5)")
async def stow(request: Request, archive: ArchiveDep, user: Writer) -> Response:
    return await _stow(request, archive, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(study: str, request: Request, archive: ArchiveDep, user: Writer) -> Response:
    return await _stow(request, archive, study)
