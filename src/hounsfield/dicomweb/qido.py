"""QIDO-RS search (PS3.18 §10.6): studies, series and instances, at every scope.

Matching (PS3.18 §8.3.4, via :mod:`hounsfield.archive.query`): single value, wildcard ``*``/``?``,
DA/TM range, UID list, ``ModalitiesInStudy``; ``includefield`` (repeated or comma-separated,
``all``); ``limit``/``offset``; ``fuzzymatching=true`` is answered with a 299 Warning (not
supported).  Keys that are DICOM keywords but not matching keys we index are ignored with a 299
Warning, as §8.3.4.1 allows; anything else is a 400 naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hounsfield.archive import query as q
from hounsfield.archive.models import Instance, Series, Study
from hounsfield.dicomweb.common import (
    base_url,
    check_uid,
    dumps,
    json_response,
    not_found,
    note_audit,
    wants_json,
)
from hounsfield.dicomweb.deps import ArchiveDep, Reader
from hounsfield.errors import InvalidInput

router = APIRouter()

_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
STUDY_LEVEL = ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
               "ReferringPhysicianName", "StudyDescription", "PatientName", "PatientID",
               "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
#: study and patient attributes repeated in series and instance results (as Orthanc does;
#: PS3.18 Table 6.7.1-2a lists them for searches across studies)
STUDY_CONTEXT = ["StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                 "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID",
                 "StudyInstanceUID", "StudyDescription"]
SERIES_LEVEL = ["Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
                "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime", "SeriesDate", "SeriesTime", "BodyPartExamined",
                *STUDY_CONTEXT]
INSTANCE_LEVEL = ["SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                  "BitsAllocated", "NumberOfFrames", "SeriesInstanceUID", "Modality",
                  "SeriesDescription", "SeriesNumber", *STUDY_CONTEXT]


class Search:
    """A parsed QIDO query: matching filters, extra fields, paging and warnings."""

    def __init__(self, request: Request, level: str, keys: dict[str, q.Key]) -> None:
        settings = request.app.state.archive.settings
        self.filters: dict[str, str] = {}
        self.include: set[str] = set()
        self.include_all = False
        self.warnings: list[str] = []
        self.limit = settings.web.qido_max_limit
        self.offset = 0
        params = request.query_params
        for name in params:
            values = params.getlist(name)
            if name == "includefield":
                for v in values:
                    for f in v.split(","):
                        self._include(f.strip())
            elif name in ("limit", "offset"):
                n = _non_negative(name, values[-1])
                if name == "offset":
                    self.offset = n
                elif n > self.limit:
                    self.warnings.append(f"limit {n} lowered to the server maximum {self.limit}")
                elif n > 0:
                    self.limit = n
            elif name == "fuzzymatching":
                v = values[-1].lower()
                if v not in ("true", "false"):
                    raise InvalidInput("fuzzymatching must be true or false")
                if v == "true":
                    self.warnings.append("fuzzymatching is not supported; exact matching used")
            else:
                keyword = _keyword(name)
                if len(values) > 1:
                    raise InvalidInput(f"matching key {name!r} given more than once")
                if keyword in keys:
                    self.filters[keyword] = values[0]
                    q.condition(keys[keyword], values[0])  # validates: 400 on a bad value
                else:
                    self.warnings.append(f"matching on {keyword} is not supported; ignored")

    def _include(self, field: str) -> None:
        if not field:
            return
        if field == "all":
            self.include_all = True
            return
        self.include.add(_keyword(field, include=True))

    def headers(self) -> dict[str, str]:
        if not self.warnings:
            return {}
        text = "; ".join(self.warnings).replace('"', "'")
        return {"Warning": f'299 hounsfield "{text}"'}


def _non_negative(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a non-negative integer, got {value[:40]!r}") from None
    if n < 0 or n > 2**31:
        raise InvalidInput(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return n


def _keyword(name: str, *, include: bool = False) -> str:
    """A query parameter naming an attribute (keyword or 8-hex tag) -> its keyword."""
    if "." in name:
        raise InvalidInput(f"sequence matching ({name!r}) is not supported")
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        kw = keyword_for_tag(int(name, 16))
        if kw:
            return kw
        if include:
            return name.upper()
        raise InvalidInput(f"unknown attribute tag {name!r}")
    if tag_for_keyword(name) is None:
        what = "includefield value" if include else "query parameter"
        raise InvalidInput(f"unknown {what} {name[:64]!r}: not a DICOM keyword or tag "
                           "(nor limit/offset/includefield/fuzzymatching)")
    return name


# -- DICOM JSON attributes ------------------------------------------------------------------

@lru_cache(maxsize=1024)
def _tag_vr(keyword: str) -> tuple[str, str]:
    tag = tag_for_keyword(keyword)
    return f"{tag:08X}", dictionary_VR(tag)


def attr(keyword: str, value: Any) -> tuple[str, dict]:
    """One DICOM JSON attribute (PS3.18 F.2) from an index value."""
    key, vr = _tag_vr(keyword)
    if value is None or value == "" or value == []:
        return key, {"vr": vr}
    values = value if isinstance(value, list) else (
        str(value).split("\\") if isinstance(value, str) else [value])
    if vr == "PN":
        return key, {"vr": vr, "Value": [{"Alphabetic": v} for v in values]}
    if vr in ("IS", "SL", "SS", "UL", "US"):
        out = []
        for v in values:
            try:
                out.append(int(v))
            except (TypeError, ValueError):
                out.append(None)
        return key, {"vr": vr, "Value": out}
    return key, {"vr": vr, "Value": values}


def _retrieve(base: str, *parts: str) -> tuple[str, dict]:
    path = "/".join(parts)
    return "00081190", {"vr": "UR", "Value": [f"{base}/{path}"]}


def _study_context(st: Study) -> dict[str, object]:
    p = st.patient
    return {
        "StudyDate": st.study_date, "StudyTime": st.study_time,
        "AccessionNumber": st.accession_number,
        "ReferringPhysicianName": st.referring_physician_name,
        "StudyDescription": st.study_description, "PatientName": p.patient_name,
        "PatientID": p.patient_id, "PatientBirthDate": p.patient_birth_date,
        "PatientSex": p.patient_sex, "StudyInstanceUID": st.study_instance_uid,
        "StudyID": st.study_id,
    }


def study_json(st: Study, counts: q.StudyCounts, base: str) -> dict[str, dict]:
    p = st.patient
    values = {
        "StudyDate": st.study_date, "StudyTime": st.study_time,
        "AccessionNumber": st.accession_number, "ModalitiesInStudy": counts.modalities,
        "ReferringPhysicianName": st.referring_physician_name,
        "StudyDescription": st.study_description, "PatientName": p.patient_name,
        "PatientID": p.patient_id, "PatientBirthDate": p.patient_birth_date,
        "PatientSex": p.patient_sex, "StudyInstanceUID": st.study_instance_uid,
        "StudyID": st.study_id, "NumberOfStudyRelatedSeries": counts.series,
        "NumberOfStudyRelatedInstances": counts.instances,
        "IssuerOfPatientID": p.issuer_of_patient_id, "InstitutionName": st.institution_name,
    }
    out = dict(attr(k, values[k]) for k in STUDY_LEVEL)
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out.update([_retrieve(base, "studies", st.study_instance_uid)])
    out["_extra"] = values  # type: ignore[assignment]
    return out


def series_json(se: Series, n: int, base: str) -> dict[str, dict]:
    values = {
        **_study_context(se.study),
        "Modality": se.modality, "SeriesDescription": se.series_description,
        "SeriesNumber": se.series_number, "SeriesInstanceUID": se.series_instance_uid,
        "NumberOfSeriesRelatedInstances": n,
        "PerformedProcedureStepStartDate": se.performed_procedure_step_start_date,
        "PerformedProcedureStepStartTime": se.performed_procedure_step_start_time,
        "SeriesDate": se.series_date, "SeriesTime": se.series_time,
        "BodyPartExamined": se.body_part_examined,
        "StudyInstanceUID": se.study.study_instance_uid,
        "Manufacturer": se.manufacturer, "ManufacturerModelName": se.manufacturer_model_name,
        "StationName": se.station_name, "InstitutionName": se.institution_name,
        "FrameOfReferenceUID": se.frame_of_reference_uid,
    }
    out = dict(attr(k, values[k]) for k in SERIES_LEVEL)
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out.update([_retrieve(base, "studies", se.study.study_instance_uid, "series",
                          se.series_instance_uid)])
    out["_extra"] = values  # type: ignore[assignment]
    return out


def instance_json(i: Instance, base: str) -> dict[str, dict]:
    se = i.series
    values = {
        **_study_context(se.study),
        "SeriesDescription": se.series_description, "SeriesNumber": se.series_number,
        "SOPClassUID": i.sop_class_uid, "SOPInstanceUID": i.sop_instance_uid,
        "InstanceNumber": i.instance_number, "Rows": i.rows, "Columns": i.columns,
        "BitsAllocated": i.bits_allocated, "NumberOfFrames": i.number_of_frames,
        "StudyInstanceUID": se.study.study_instance_uid,
        "SeriesInstanceUID": se.series_instance_uid, "Modality": se.modality,
    }
    out = dict(attr(k, values[k]) for k in INSTANCE_LEVEL)
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out.update([_retrieve(base, "studies", se.study.study_instance_uid, "series",
                          se.series_instance_uid, "instances", i.sop_instance_uid)])
    return out


def _add_included(out: dict, search: Search, meta: Callable[[], dict] | None,
                  skip: frozenset[str] = frozenset()) -> dict:
    """Add includefield attributes: from the index first, else from an instance's metadata
    (except ``skip``: attributes of a lower level, e.g. Modality asked of a study)."""
    extra = out.pop("_extra", {})
    wanted = set(search.include)
    if search.include_all:
        wanted |= set(extra)
    cache: dict | None = None
    for kw in sorted(wanted):
        if kw in extra:
            k, v = attr(kw, extra[kw])
            out.setdefault(k, v)
            continue
        tag = f"{tag_for_keyword(kw):08X}" if tag_for_keyword(kw) is not None else kw
        if tag in out or meta is None or kw in skip:
            continue
        if cache is None:
            cache = meta() or {}
        if tag in cache and "BulkDataURI" not in cache[tag]:
            out[tag] = cache[tag]
    return dict(sorted(out.items()))


#: instance-level keys make no sense for a whole series; series-level ones not for a study
#: (OHIF asks studies for Modality: ModalitiesInStudy answers that)
_BELOW_SERIES = frozenset(q.INSTANCE_KEYS) | {"NumberOfFrames", "Rows", "Columns"}
_BELOW_STUDY = _BELOW_SERIES | frozenset(q.SERIES_KEYS)


def _representative(archive, *, study_pk: int | None = None, series_pk: int | None = None):  # noqa: ANN001
    def load() -> dict:
        with archive.session() as s:
            stmt = select(Instance.metadata_json)
            if series_pk is not None:
                stmt = stmt.where(Instance.series_pk == series_pk)
            else:
                stmt = stmt.join(Series, Series.id == Instance.series_pk).where(
                    Series.study_pk == study_pk)
            return s.scalar(stmt.limit(1)) or {}
    return load


# -- routes ---------------------------------------------------------------------------------

def _search_studies(request: Request, archive, extra: dict[str, str]) -> Response:  # noqa: ANN001
    search = Search(request, "study", q.STUDY_KEYS)
    search.filters.update(extra)
    base = base_url(request)
    ci = archive.settings.dicom.case_insensitive_pn
    with archive.session() as s:
        studies = q.find_studies(s, search.filters, limit=search.limit, offset=search.offset,
                                 case_insensitive_pn=ci)
        counts = q.study_counts(s, [st.id for st in studies])
        result = [_add_included(study_json(st, counts[st.id], base), search,
                                _representative(archive, study_pk=st.id), _BELOW_STUDY)
                  for st in studies]
    if len(studies) == 1:
        note_audit(request, study=studies[0].study_instance_uid,
                   patient=studies[0].patient.patient_id)
    note_audit(request, detail=f"{len(result)} studies matched {search.filters}"[:500])
    return json_response(request, dumps(result), headers=search.headers())


def _search_series(request: Request, archive, extra: dict[str, str]) -> Response:  # noqa: ANN001
    search = Search(request, "series", {**q.STUDY_KEYS, **q.SERIES_KEYS})
    search.filters.update(extra)
    base = base_url(request)
    ci = archive.settings.dicom.case_insensitive_pn
    with archive.session() as s:
        if "StudyInstanceUID" in extra and q.get_study(s, extra["StudyInstanceUID"]) is None:
            raise not_found("study", extra["StudyInstanceUID"])
        series = q.find_series(s, search.filters, limit=search.limit, offset=search.offset,
                               case_insensitive_pn=ci)
        counts = q.series_counts(s, [se.id for se in series])
        result = [_add_included(series_json(se, counts[se.id], base), search,
                                _representative(archive, series_pk=se.id), _BELOW_SERIES)
                  for se in series]
    note_audit(request, study=extra.get("StudyInstanceUID", ""),
               detail=f"{len(result)} series matched {search.filters}"[:500])
    return json_response(request, dumps(result), headers=search.headers())


def _search_instances(request: Request, archive, extra: dict[str, str]) -> Response:  # noqa: ANN001
    search = Search(request, "instance", {**q.STUDY_KEYS, **q.SERIES_KEYS, **q.INSTANCE_KEYS})
    search.filters.update(extra)
    base = base_url(request)
    ci = archive.settings.dicom.case_insensitive_pn
    with archive.session() as s:
        if "StudyInstanceUID" in extra and q.get_study(s, extra["StudyInstanceUID"]) is None:
            raise not_found("study", extra["StudyInstanceUID"])
        if "SeriesInstanceUID" in extra and s.scalar(select(Series.id).where(
                Series.series_instance_uid == extra["SeriesInstanceUID"])) is None:
            raise not_found("series", extra["SeriesInstanceUID"])
        found = q.find_instances(s, search.filters, limit=search.limit, offset=search.offset,
                                 case_insensitive_pn=ci)
        result = []
        for i in found:
            out = instance_json(i, base)
            wanted = set(search.include)
            meta = i.metadata_json or {}
            for key, value in (meta.items() if search.include_all else []):
                if "BulkDataURI" not in value:
                    out.setdefault(key, value)
            for kw in wanted:
                tag = tag_for_keyword(kw)
                key = f"{tag:08X}" if tag is not None else kw
                if key in meta and "BulkDataURI" not in meta[key]:
                    out.setdefault(key, meta[key])
            result.append(dict(sorted(out.items())))
    note_audit(request, study=extra.get("StudyInstanceUID", ""),
               detail=f"{len(result)} instances matched {search.filters}"[:500])
    return json_response(request, dumps(result), headers=search.headers())


@router.get("/studies", summary="QIDO-RS: search for studies (PS3.18 §10.6)")
async def search_studies(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    wants_json(request)
    return await run_in_threadpool(_search_studies, request, archive, {})


@router.get("/series", summary="QIDO-RS: search for series (all studies)")
async def search_all_series(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    wants_json(request)
    return await run_in_threadpool(_search_series, request, archive, {})


@router.get("/instances", summary="QIDO-RS: search for instances (all studies)")
async def search_all_instances(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    wants_json(request)
    return await run_in_threadpool(_search_instances, request, archive, {})


@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study")
async def search_study_series(study: str, request: Request, archive: ArchiveDep,
                              user: Reader) -> Response:
    wants_json(request)
    check_uid(study, "StudyInstanceUID")
    return await run_in_threadpool(_search_series, request, archive, {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study")
async def search_study_instances(study: str, request: Request, archive: ArchiveDep,
                                 user: Reader) -> Response:
    wants_json(request)
    check_uid(study, "StudyInstanceUID")
    return await run_in_threadpool(_search_instances, request, archive,
                                   {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances",
            summary="QIDO-RS: search for instances of a series")
async def search_series_instances(study: str, series: str, request: Request, archive: ArchiveDep,
                                  user: Reader) -> Response:
    wants_json(request)
    check_uid(study, "StudyInstanceUID")
    check_uid(series, "SeriesInstanceUID")
    return await run_in_threadpool(_search_instances, request, archive,
                                   {"StudyInstanceUID": study, "SeriesInstanceUID": series})
