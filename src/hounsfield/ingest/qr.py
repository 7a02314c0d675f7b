"""Query/Retrieve SCP logic (PS3.4 Annex C): identifiers -> index queries -> response identifiers.

Matching is :mod:`hounsfield.archive.query` (shared with QIDO-RS); this module turns a C-FIND
identifier into its filters, builds the pending responses with every requested return key
(C.2.2.1.2: keys we cannot supply are returned empty), and selects the instances a C-MOVE /
C-GET asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy.orm import Session

from hounsfield.archive import query as q
from hounsfield.archive.models import Instance, Patient, Series, Study
from hounsfield.errors import InvalidInput

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
PATIENT_ROOT = "P"
STUDY_ROOT = "S"
#: unique key per level (PS3.4 C.6.1.1 / C.6.2.1)
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
          "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"}


@dataclass
class FindRequest:
    level: str
    filters: dict[str, str]
    requested: list[str]                       # keywords to return
    unknown_matching: list[str] = field(default_factory=list)


def parse_identifier(identifier: Dataset, model: str = STUDY_ROOT) -> FindRequest:
    """Read a C-FIND / C-MOVE / C-GET identifier (PS3.4 C.4.1.1.3.1).

    Raises :class:`InvalidInput` (-> 0xA900 / 0xC000) on a missing or wrong QueryRetrieveLevel.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise InvalidInput(f"QueryRetrieveLevel must be one of {', '.join(LEVELS)}, got {level!r}")
    if model == STUDY_ROOT and level == "PATIENT":
        raise InvalidInput("the Study Root model has no PATIENT level")
    keys = _keys_for(level)
    filters: dict[str, str] = {}
    requested: list[str] = []
    unknown: list[str] = []
    for elem in identifier:
        kw = elem.keyword or ""
        if not kw or kw in _SKIP or elem.tag.group in (0x0000, 0x0002):
            continue
        requested.append(kw)
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            continue
        value = _as_text(elem)
        if kw in keys:
            filters[kw] = value
        elif value not in ("", "*"):
            unknown.append(kw)
    return FindRequest(level, filters, requested, unknown)


def _as_text(elem: DataElement) -> str:
    v = elem.value
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def _keys_for(level: str) -> dict[str, q.Key]:
    if level == "PATIENT":
        return q.PATIENT_KEYS
    if level == "STUDY":
        return q.STUDY_KEYS
    if level == "SERIES":
        return {**q.STUDY_KEYS, **q.SERIES_KEYS}
    return {**q.STUDY_KEYS, **q.SERIES_KEYS, **q.INSTANCE_KEYS}


def _patient_values(p: Patient) -> dict[str, object]:
    return {"PatientName": p.patient_name, "PatientID": p.patient_id,
            "IssuerOfPatientID": p.issuer_of_patient_id, "PatientBirthDate": p.patient_birth_date,
            "PatientSex": p.patient_sex}


def _study_values(st: Study) -> dict[str, object]:
    return {**_patient_values(st.patient),
            "StudyInstanceUID": st.study_instance_uid, "StudyDate": st.study_date,
            "StudyTime": st.study_time, "AccessionNumber": st.accession_number,
            "StudyID": st.study_id, "StudyDescription": st.study_description,
            "ReferringPhysicianName": st.referring_physician_name,
            "InstitutionName": st.institution_name}


def _series_values(se: Series) -> dict[str, object]:
    return {**_study_values(se.study),
            "SeriesInstanceUID": se.series_instance_uid, "Modality": se.modality,
            "SeriesNumber": se.series_number, "SeriesDescription": se.series_description,
            "BodyPartExamined": se.body_part_examined, "SeriesDate": se.series_date,
            "SeriesTime": se.series_time, "Manufacturer": se.manufacturer,
            "ManufacturerModelName": se.manufacturer_model_name, "StationName": se.station_name,
            "PerformedProcedureStepStartDate": se.performed_procedure_step_start_date,
            "PerformedProcedureStepStartTime": se.performed_procedure_step_start_time,
            "FrameOfReferenceUID": se.frame_of_reference_uid}


def _instance_values(i: Instance) -> dict[str, object]:
    return {**_series_values(i.series),
            "SOPInstanceUID": i.sop_instance_uid, "SOPClassUID": i.sop_class_uid,
            "InstanceNumber": i.instance_number, "ContentDate": i.content_date,
            "ContentTime": i.content_time, "Rows": i.rows, "Columns": i.columns,
            "NumberOfFrames": i.number_of_frames, "BitsAllocated": i.bits_allocated}


def find(s: Session, req: FindRequest, *, ae_title: str, case_insensitive_pn: bool = True,
         limit: int | None = None) -> Iterator[Dataset]:
    """PS3.4 C.4.1.3.1: one response identifier per match, with the requested keys."""
    ci = case_insensitive_pn
    if req.level == "PATIENT":
        rows = q.find_patients(s, req.filters, limit=limit, case_insensitive_pn=ci)
        for p in rows:
            extra = {"NumberOfPatientRelatedStudies": len(p.studies)}
            yield _response(req, {**_patient_values(p), **extra}, ae_title, None)
    elif req.level == "STUDY":
        rows = q.find_studies(s, req.filters, limit=limit, case_insensitive_pn=ci)
        counts = q.study_counts(s, [r.id for r in rows])
        for st in rows:
            c = counts[st.id]
            extra = {"ModalitiesInStudy": "\\".join(c.modalities),
                     "NumberOfStudyRelatedSeries": c.series,
                     "NumberOfStudyRelatedInstances": c.instances}
            yield _response(req, {**_study_values(st), **extra}, ae_title, None)
    elif req.level == "SERIES":
        rows = q.find_series(s, req.filters, limit=limit, case_insensitive_pn=ci)
        counts = q.series_counts(s, [r.id for r in rows])
        for se in rows:
            extra = {"NumberOfSeriesRelatedInstances": counts.get(se.id, 0)}
            yield _response(req, {**_series_values(se), **extra}, ae_title, None)
    else:
        rows = q.find_instances(s, req.filters, limit=limit, case_insensitive_pn=ci)
        for inst in rows:
            yield _response(req, _instance_values(inst), ae_title, inst.metadata_json)


def _response(req: FindRequest, values: dict[str, object], ae_title: str,
              metadata: dict | None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # the index keeps decoded Unicode; answer in UTF-8
    ds.QueryRetrieveLevel = req.level
    wanted = list(dict.fromkeys([*req.requested, UNIQUE[req.level]]))
    for kw in wanted:
        tv = _tag_vr(kw)
        if tv is None:
            continue
        tag, vr = tv
        if kw in values:
            v = values[kw]
            if " or " in vr:  # a VR that depends on other attributes: pydicom decides
                setattr(ds, kw, "" if v is None else v)
            else:  # the index's values, as they are (building elements the checked way
                ds.add(DataElement(tag, vr, v, validation_mode=config.IGNORE))  # cost 2x)
        elif metadata is not None and f"{tag:08X}" in metadata and \
                "BulkDataURI" not in metadata[f"{tag:08X}"]:
            try:
                ds.add(DataElement.from_json(Dataset, f"{tag:08X}", metadata[f"{tag:08X}"]["vr"],
                                             metadata[f"{tag:08X}"].get("Value"), "Value"))
            except Exception:  # noqa: BLE001 - an odd stored value is returned empty
                ds.add_new(tag, vr, None)
        elif kw == "RetrieveAETitle":
            ds.RetrieveAETitle = ae_title
        else:
            ds.add_new(tag, vr, None)
    if "RetrieveAETitle" not in ds:
        ds.RetrieveAETitle = ae_title
    return ds


_TAG_VR: dict[str, tuple[int, str] | None] = {}


def _tag_vr(keyword: str) -> tuple[int, str] | None:
    """The tag and dictionary VR of ``keyword`` (``None`` when it is not a DICOM keyword)."""
    if keyword not in _TAG_VR:
        tag = tag_for_keyword(keyword)
        _TAG_VR[keyword] = (tag, dictionary_VR(tag)) if tag is not None else None
    return _TAG_VR[keyword]


def select_instances(s: Session, req: FindRequest) -> list[Instance]:
    """The instances a C-MOVE / C-GET identifier names (PS3.4 C.4.2.2.1: unique keys only at
    and above the level; we also honour other supported keys)."""
    unique_given = {k: v for k, v in req.filters.items() if k in UNIQUE.values()}
    if not unique_given:
        raise InvalidInput(f"a {req.level}-level retrieve needs {UNIQUE[req.level]} "
                           "(or a higher-level unique key)")
    return q.find_instances(s, req.filters)


def describe(tag_or_kw: object) -> str:
    if isinstance(tag_or_kw, int):
        return keyword_for_tag(tag_or_kw) or f"{tag_or_kw:08X}"
    return str(tag_or_kw)
