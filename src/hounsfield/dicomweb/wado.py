"""WADO-RS retrieve (PS3.18 §10.4) and WADO-URI (PS3.18 §9).

- instances (study / series / instance) as multipart/related application/dicom, with transfer
  syntax negotiation (``transfer-syntax=*`` returns the stored bytes untouched);
- metadata from the index's JSON cache (no file is read), BulkDataURIs made absolute;
- frames (stored or transcoded), bulk data, rendered and thumbnail images.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Text, cast, select
from starlette.responses import Response, StreamingResponse

from hounsfield.archive.archive import Archive
from hounsfield.archive.models import Instance, Series, Study
from hounsfield.dicom.json_model import resolve_bulkdata_path
from hounsfield.dicomweb import pixels, render
from hounsfield.dicomweb.common import (
    NotAcceptable,
    base_url,
    check_uid,
    json_response,
    note_audit,
    parse_accept,
    wants_json,
)
from hounsfield.dicomweb.deps import ArchiveDep, Reader
from hounsfield.dicomweb.multipart import new_boundary, related_content_type, related_stream
from hounsfield.errors import InvalidInput, NotFound

router = APIRouter()

_BULK_PATH = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8})*$")
_BULK_URI = re.compile(r'("BulkDataURI":\s*")bulkdata/')
_DECODE_ERRORS = (RuntimeError, NotImplementedError, ValueError, TypeError, KeyError,
                  AttributeError, IndexError)


# -- finding instances ----------------------------------------------------------------------

def _select(columns, study: str, series: str | None, sop: str | None):  # noqa: ANN001, ANN202
    stmt = (select(*columns).join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk).where(Study.study_instance_uid == study))
    if series is not None:
        stmt = stmt.where(Series.series_instance_uid == series)
    if sop is not None:
        stmt = stmt.where(Instance.sop_instance_uid == sop)
    return stmt.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)


def _missing(archive: Archive, study: str, series: str | None, sop: str | None) -> NotFound:
    """The most precise 404: which of the UIDs in the path is unknown."""
    with archive.session() as s:
        if s.scalar(select(Study.id).where(Study.study_instance_uid == study)) is None:
            return NotFound(f"study {study} not found")
        if series is not None and s.scalar(select(Series.id).join(Study).where(
                Study.study_instance_uid == study,
                Series.series_instance_uid == series)) is None:
            return NotFound(f"series {series} not found in study {study}")
    if sop is not None:
        return NotFound(f"instance {sop} not found in series {series}")
    return NotFound("no instances found")


def _rows(archive: Archive, study: str, series: str | None = None, sop: str | None = None):  # noqa: ANN202
    check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    if sop is not None:
        check_uid(sop, "SOPInstanceUID")
    cols = (Instance.sop_instance_uid, Series.series_instance_uid, Instance.blob_key,
            Instance.transfer_syntax_uid, Instance.sop_class_uid, Instance.rows, Instance.columns,
            Instance.bits_allocated, Instance.number_of_frames)
    with archive.session() as s:
        rows = s.execute(_select(cols, study, series, sop)).all()
    if not rows:
        raise _missing(archive, study, series, sop)
    return rows


def _one(archive: Archive, study: str, series: str, sop: str):  # noqa: ANN202
    return _rows(archive, study, series, sop)[0]


# -- negotiation ----------------------------------------------------------------------------

def dicom_targets(accept: str | None) -> list[str]:
    """Transfer syntaxes acceptable for application/dicom parts, best first (PS3.18 §8.7.3.5)."""
    items = parse_accept(accept)
    if not items:
        return [ExplicitVRLittleEndian]
    out = []
    for it in items:
        if it.media == "multipart/related":
            if it.params.get("type", "application/dicom") not in ("application/dicom", "*/*"):
                continue
        elif it.media not in ("application/dicom", "*/*", "application/*"):
            continue
        out.append(it.params.get("transfer-syntax") or ExplicitVRLittleEndian)
    if not out:
        raise NotAcceptable("instances are offered as multipart/related; type=\"application/dicom\""
                            f"; Accept was {accept!r}")
    return out


def frame_target(accept: str | None, stored: str) -> tuple[str, str]:
    """(transfer syntax, part media type) for frames / bulk data given the Accept header."""
    items = parse_accept(accept)
    if not items:
        return ExplicitVRLittleEndian, "application/octet-stream"
    for it in items:
        if it.media == "multipart/related":
            part = it.params.get("type", "application/octet-stream")
        elif it.media in ("*/*", "application/octet-stream") or it.media.startswith("image/"):
            part = it.media
        else:
            continue
        ts = it.params.get("transfer-syntax")
        if part in ("*/*", "image/*"):
            part, ts = "application/octet-stream", ts or "*"
        if ts == "*":
            return stored, part
        ts = ts or pixels.MEDIA_DEFAULT_TS.get(part)
        if ts and pixels.can_produce(stored, ts):
            return ts, part
    raise NotAcceptable(f"cannot provide frames stored as {stored} in any form of {accept!r}; "
                        "ask for transfer-syntax=* or 1.2.840.10008.1.2.1")


# -- retrieve instances ---------------------------------------------------------------------

def _retrieve(request: Request, archive: Archive, study: str, series: str | None,
              sop: str | None) -> Response:
    targets = dicom_targets(request.headers.get("accept"))
    rows = _rows(archive, study, series, sop)
    plan = []
    for r in rows:
        ts = next((t for t in targets if pixels.can_produce(r.transfer_syntax_uid, t)), None)
        if ts is None:
            raise NotAcceptable(f"instance {r.sop_instance_uid} is stored as "
                                f"{r.transfer_syntax_uid} and cannot be transcoded to "
                                f"{', '.join(targets)}")
        plan.append((r, r.transfer_syntax_uid if ts == "*" else ts))
    note_audit(request, study=study, detail=f"retrieve {len(rows)} instance(s)")
    boundary = new_boundary()
    blobs = archive.blobs
    # transcoding can fail on odd data: do it before the status line is sent, so a failure is
    # a 406 with a reason and not a broken stream; stored bytes are streamed lazily
    converted: dict[str, bytes] = {}
    for r, ts in plan:
        if ts != r.transfer_syntax_uid:
            try:
                converted[r.sop_instance_uid] = pixels.transcode_instance(
                    blobs.read(r.blob_key), r.transfer_syntax_uid, ts)
            except _DECODE_ERRORS as exc:
                raise NotAcceptable(f"cannot transcode instance {r.sop_instance_uid} from "
                                    f"{r.transfer_syntax_uid} to {ts}: {exc}") from exc

    def parts():  # noqa: ANN202
        for r, ts in plan:
            data = converted.pop(r.sop_instance_uid, None) or blobs.read(r.blob_key)
            yield {"Content-Type": f"application/dicom; transfer-syntax={ts}",
                   "Content-Length": str(len(data))}, data

    single = len({ts for _r, ts in plan}) == 1
    ctype = related_content_type(boundary, "application/dicom",
                                 transfer_syntax=plan[0][1] if single else "")
    return StreamingResponse(related_stream(boundary, parts()), media_type=ctype)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study's instances")
def retrieve_study(study: str, request: Request, archive: ArchiveDep, user: Reader) -> Response:
    return _retrieve(request, archive, study, None, None)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(study: str, series: str, request: Request, archive: ArchiveDep,
                    user: Reader) -> Response:
    return _retrieve(request, archive, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}",
            summary="WADO-RS: retrieve an instance")
def retrieve_instance(study: str, series: str, sop: str, request: Request, archive: ArchiveDep,
                      user: Reader) -> Response:
    return _retrieve(request, archive, study, series, sop)


# -- metadata -------------------------------------------------------------------------------

def _metadata(request: Request, archive: Archive, study: str, series: str | None,
              sop: str | None) -> Response:
    """PS3.18 §10.4.1.1.2: every instance's DICOM JSON, straight from the index cache."""
    wants_json(request)
    for uid, what in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID"),
                      (sop, "SOPInstanceUID")):
        if uid is not None:
            check_uid(uid, what)
    cols = (Instance.sop_instance_uid, Series.series_instance_uid, Instance.transfer_syntax_uid,
            Instance.rows, Instance.bits_allocated, cast(Instance.metadata_json, Text))
    with archive.session() as s:
        rows = s.execute(_select(cols, study, series, sop)).all()
    if not rows:
        raise _missing(archive, study, series, sop)
    base = f"{base_url(request)}/studies/{study}/series/"
    out = []
    for sop_uid, series_uid, ts, n_rows, bits, text in rows:
        text = text or "{}"
        prefix = f"{base}{series_uid}/instances/{sop_uid}/bulkdata/"
        text = _BULK_URI.sub(lambda m, p=prefix: m.group(1) + p, text)
        head = f'{{"00020010":{{"vr":"UI","Value":["{ts}"]}}'
        if n_rows is not None and '"7FE00010"' not in text:
            # the cache is built without pixels (headers only); Pixel Data is bulk data
            vr = "OW" if ts in pixels.NATIVE and (bits or 16) > 8 else "OB"
            head += f',"7FE00010":{{"vr":"{vr}","BulkDataURI":"{prefix}7FE00010"}}'
        body = text.strip()[1:]
        out.append(head + ("," + body if body.strip() != "}" else "}"))
    note_audit(request, study=study, detail=f"metadata of {len(rows)} instance(s)")
    return json_response(request, "[" + ",".join(out) + "]")


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata")
def study_metadata(study: str, request: Request, archive: ArchiveDep, user: Reader) -> Response:
    return _metadata(request, archive, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: series metadata")
def series_metadata(study: str, series: str, request: Request, archive: ArchiveDep,
                    user: Reader) -> Response:
    return _metadata(request, archive, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata",
            summary="WADO-RS: instance metadata")
def instance_metadata(study: str, series: str, sop: str, request: Request, archive: ArchiveDep,
                      user: Reader) -> Response:
    return _metadata(request, archive, study, series, sop)


# -- frames and bulk data -------------------------------------------------------------------

@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
            summary="WADO-RS: retrieve frames (PS3.18 §10.4.1.1.4)")
def retrieve_frames(study: str, series: str, sop: str, frames: str, request: Request,
                    archive: ArchiveDep, user: Reader) -> Response:
    numbers = pixels.parse_frame_list(frames)
    row = _one(archive, study, series, sop)
    ts, part = frame_target(request.headers.get("accept"), row.transfer_syntax_uid)
    data = archive.blobs.read(row.blob_key)
    tail = None
    single = (row.number_of_frames or 1) == 1
    if ts in (row.transfer_syntax_uid, ExplicitVRLittleEndian) and single:
        tail = pixels.FrameSource.native_tail(data, row.transfer_syntax_uid, row.rows,
                                              row.columns, row.bits_allocated, 1)
    if tail is not None:
        if numbers != [1]:
            raise NotFound(f"frame {max(numbers)} does not exist: the instance has 1 frame(s), "
                           "numbered from 1")
        bodies = [tail]
        ts = row.transfer_syntax_uid if ts == "*" else ts
    else:
        source = pixels.FrameSource.of(data, row.transfer_syntax_uid)
        source.check(numbers)
        try:
            bodies = [source.frame(n, ts) for n in numbers]
        except _DECODE_ERRORS as exc:
            raise NotAcceptable(f"cannot transcode frames from {row.transfer_syntax_uid} to "
                                f"{ts}: {exc}") from exc
    note_audit(request, study=study, detail=f"frames {frames[:100]} of {sop}")
    boundary = new_boundary()
    media = pixels.frame_media(part, ts)
    parts = [({"Content-Type": media, "Content-Length": str(len(b)),
               "Content-Location": f"{base_url(request)}/studies/{study}/series/{series}/"
                                   f"instances/{sop}/frames/{n}"}, b)
             for n, b in zip(numbers, bodies, strict=True)]
    ctype = related_content_type(boundary, media.split(";")[0], transfer_syntax=ts)
    return Response(b"".join(related_stream(boundary, parts)), media_type=ctype)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path:path}",
            summary="WADO-RS: retrieve bulk data named by a BulkDataURI")
def retrieve_bulkdata(study: str, series: str, sop: str, path: str, request: Request,
                      archive: ArchiveDep, user: Reader) -> Response:
    if not _BULK_PATH.match(path):
        raise InvalidInput("bulk data path must be <tag>[/<item>/<tag>]... as given in the "
                           f"metadata's BulkDataURI, got {path[:80]!r}")
    row = _one(archive, study, series, sop)
    ds = pixels.load(archive.blobs.read(row.blob_key))
    try:
        elem = resolve_bulkdata_path(ds, path)
    except (KeyError, IndexError, ValueError) as exc:
        raise NotFound(f"no bulk data at {path} in instance {sop}") from exc
    value = elem.value
    if not isinstance(value, (bytes, bytearray)):
        raise NotFound(f"{path} in instance {sop} is not bulk data")
    note_audit(request, study=study, detail=f"bulkdata {path} of {sop}")
    ts = row.transfer_syntax_uid
    media = f"application/octet-stream; transfer-syntax={ts}"
    boundary = new_boundary()
    ctype = related_content_type(boundary, "application/octet-stream")
    body = b"".join(related_stream(boundary, [({"Content-Type": media}, bytes(value))]))
    return Response(body, media_type=ctype)


# -- rendered and thumbnails ----------------------------------------------------------------

def _render_media(request: Request) -> str:
    wanted = request.query_params.get("accept")
    items = parse_accept(wanted or request.headers.get("accept"))
    for it in items or []:
        if it.media in render.RENDER_MEDIA:
            return it.media
        if it.media in ("*/*", "image/*"):
            return "image/jpeg"
    if not items:
        return "image/jpeg"
    raise NotAcceptable("rendered images are offered as image/jpeg or image/png")


def _rendered(request: Request, archive: Archive, row, frame: int, thumbnail: bool,  # noqa: ANN001
              media: str | None = None) -> Response:
    media = media or _render_media(request)
    params = request.query_params
    window = render.parse_window(params.get("window"))
    viewport = render.parse_viewport(params.get("viewport"), 128 if thumbnail else None)
    quality = render.parse_quality(params.get("quality"))
    source = pixels.FrameSource.of(archive.blobs.read(row.blob_key), row.transfer_syntax_uid)
    source.check([frame])
    try:
        body = render.render(source.ds, frame - 1, media=media, window=window,
                             viewport=viewport, quality=quality)
    except _DECODE_ERRORS as exc:
        raise NotAcceptable(f"cannot render this instance ({row.transfer_syntax_uid}): {exc}") \
            from exc
    headers = {"Cache-Control": "private, max-age=3600"} if thumbnail else {}
    return Response(body, media_type=media, headers=headers)


def _representative(archive: Archive, study: str, series: str | None):  # noqa: ANN202
    """The middle image of the first series with pixels (for study/series thumbnails)."""
    cols = (Instance.sop_instance_uid, Series.series_instance_uid, Instance.blob_key,
            Instance.transfer_syntax_uid, Instance.sop_class_uid)
    check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    with archive.session() as s:
        rows = s.execute(_select(cols, study, series, None).where(Instance.rows.is_not(None))).all()
    if not rows:
        if series is not None:
            _rows(archive, study, series)  # 404 for unknown UIDs
        raise NotFound("no image in this study/series to make a thumbnail of")
    first = rows[0].series_instance_uid
    images = [r for r in rows if r.series_instance_uid == first]
    return images[len(images) // 2]


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered",
            summary="WADO-RS: rendered instance (first frame)")
def rendered_instance(study: str, series: str, sop: str, request: Request, archive: ArchiveDep,
                      user: Reader, window: str | None = None, viewport: str | None = None,
                      quality: str | None = None) -> Response:
    row = _one(archive, study, series, sop)
    note_audit(request, study=study, detail=f"rendered {sop}")
    return _rendered(request, archive, row, 1, False)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered",
            summary="WADO-RS: rendered frame")
def rendered_frame(study: str, series: str, sop: str, frames: str, request: Request,
                   archive: ArchiveDep, user: Reader, window: str | None = None,
                   viewport: str | None = None, quality: str | None = None) -> Response:
    numbers = pixels.parse_frame_list(frames)
    if len(numbers) != 1:
        raise InvalidInput("render one frame per request")
    row = _one(archive, study, series, sop)
    note_audit(request, study=study, detail=f"rendered frame {numbers[0]} of {sop}")
    return _rendered(request, archive, row, numbers[0], False)


@router.get("/studies/{study}/thumbnail", summary="WADO-RS: study thumbnail")
def study_thumbnail(study: str, request: Request, archive: ArchiveDep, user: Reader,
                    viewport: str | None = None) -> Response:
    row = _representative(archive, study, None)
    note_audit(request, study=study, detail="thumbnail")
    return _rendered(request, archive, row, 1, True)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="WADO-RS: series thumbnail")
def series_thumbnail(study: str, series: str, request: Request, archive: ArchiveDep,
                     user: Reader, viewport: str | None = None) -> Response:
    row = _representative(archive, study, series)
    note_audit(request, study=study, detail=f"thumbnail of series {series}")
    return _rendered(request, archive, row, 1, True)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail",
            summary="WADO-RS: instance thumbnail")
def instance_thumbnail(study: str, series: str, sop: str, request: Request, archive: ArchiveDep,
                       user: Reader, viewport: str | None = None) -> Response:
    row = _one(archive, study, series, sop)
    note_audit(request, study=study, detail=f"thumbnail of {sop}")
    return _rendered(request, archive, row, 1, True)


# -- WADO-URI -------------------------------------------------------------------------------

@router.get("/wado", summary="WADO-URI (PS3.18 §9): one object as application/dicom or JPEG")
def wado_uri(request: Request, archive: ArchiveDep, user: Reader,
             requestType: str = Query(...), studyUID: str = Query(...),  # noqa: N803
             seriesUID: str = Query(...), objectUID: str = Query(...),  # noqa: N803
             contentType: str | None = None, transferSyntax: str | None = None,  # noqa: N803
             frameNumber: int | None = None) -> Response:  # noqa: N803
    if requestType != "WADO":
        raise InvalidInput("requestType must be WADO")
    row = _one(archive, studyUID, seriesUID, objectUID)
    note_audit(request, study=studyUID, detail=f"WADO-URI {objectUID}")
    media = (contentType or "application/dicom").split(",")[0].strip()
    if media == "application/dicom":
        ts = transferSyntax or row.transfer_syntax_uid
        if not pixels.can_produce(row.transfer_syntax_uid, ts):
            raise NotAcceptable(f"cannot provide transfer syntax {ts}")
        data = pixels.transcode_instance(archive.blobs.read(row.blob_key),
                                         row.transfer_syntax_uid, ts)
        return Response(data, media_type="application/dicom")
    if media in render.RENDER_MEDIA or media == "image/*":
        return _rendered(request, archive, row, frameNumber or 1, False,
                         media if media in render.RENDER_MEDIA else "image/jpeg")
    raise NotAcceptable(f"contentType {media!r} is not offered (application/dicom, image/jpeg, "
                        "image/png)")
