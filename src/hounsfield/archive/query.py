"""Attribute matching over the index, shared by C-FIND (PS3.4 C.2.2.2) and QIDO-RS (PS3.18 §8.3.4).

Supported matching: universal (empty or ``*``), single value, wildcard (``*`` and ``?``),
range for DA / TM / DT (``a-b``, ``a-``, ``-b``), list of UIDs (``a\\b``), and case-insensitive
PN matching when asked.  Values are bound parameters — never spliced into SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, Select, and_, distinct, func, or_, select
from sqlalchemy.orm import Session, joinedload

from hounsfield.archive.models import Instance, Patient, Series, Study
from hounsfield.errors import InvalidInput

Kind = Literal["text", "pn", "date", "time", "uid", "int", "modalities"]


@dataclass(frozen=True)
class Key:
    column: object
    kind: Kind


PATIENT_KEYS: dict[str, Key] = {
    "PatientName": Key(Patient.patient_name, "pn"),
    "PatientID": Key(Patient.patient_id, "text"),
    "IssuerOfPatientID": Key(Patient.issuer_of_patient_id, "text"),
    "PatientBirthDate": Key(Patient.patient_birth_date, "date"),
    "PatientSex": Key(Patient.patient_sex, "text"),
}
STUDY_KEYS: dict[str, Key] = {
    **PATIENT_KEYS,
    "StudyInstanceUID": Key(Study.study_instance_uid, "uid"),
    "StudyDate": Key(Study.study_date, "date"),
    "StudyTime": Key(Study.study_time, "time"),
    "AccessionNumber": Key(Study.accession_number, "text"),
    "StudyID": Key(Study.study_id, "text"),
    "StudyDescription": Key(Study.study_description, "text"),
    "ReferringPhysicianName": Key(Study.referring_physician_name, "pn"),
    "ModalitiesInStudy": Key(Series.modality, "modalities"),
    "InstitutionName": Key(Study.institution_name, "text"),
}
SERIES_KEYS: dict[str, Key] = {
    "SeriesInstanceUID": Key(Series.series_instance_uid, "uid"),
    "Modality": Key(Series.modality, "text"),
    "SeriesNumber": Key(Series.series_number, "int"),
    "SeriesDescription": Key(Series.series_description, "text"),
    "BodyPartExamined": Key(Series.body_part_examined, "text"),
    "SeriesDate": Key(Series.series_date, "date"),
    "SeriesTime": Key(Series.series_time, "time"),
    "PerformedProcedureStepStartDate": Key(Series.performed_procedure_step_start_date, "date"),
    "PerformedProcedureStepStartTime": Key(Series.performed_procedure_step_start_time, "time"),
    "Manufacturer": Key(Series.manufacturer, "text"),
    "ManufacturerModelName": Key(Series.manufacturer_model_name, "text"),
    "StationName": Key(Series.station_name, "text"),
}
INSTANCE_KEYS: dict[str, Key] = {
    "SOPInstanceUID": Key(Instance.sop_instance_uid, "uid"),
    "SOPClassUID": Key(Instance.sop_class_uid, "uid"),
    "InstanceNumber": Key(Instance.instance_number, "int"),
    "ContentDate": Key(Instance.content_date, "date"),
    "ContentTime": Key(Instance.content_time, "time"),
}


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def condition(key: Key, value: str, *, case_insensitive_pn: bool = True) -> ColumnElement | None:
    """The SQL condition for matching ``value`` against ``key`` (None = universal match)."""
    value = value.strip()
    if value in ("", "*"):
        return None
    col = key.column
    if key.kind == "uid":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        if any(len(u) > 64 for u in uids):
            raise InvalidInput(f"UID longer than 64 characters: {value[:80]!r}")
        return col.in_(uids) if len(uids) > 1 else col == uids[0]
    if key.kind in ("date", "time"):
        if "-" in value:
            lo, _, hi = value.partition("-")
            _check_dt(key.kind, lo)
            _check_dt(key.kind, hi)
            conds = []
            if lo:
                conds.append(col >= lo)
            if hi:
                # a TM/DA upper bound is inclusive of everything that starts with it
                conds.append(col <= hi + ("\uffff" if key.kind == "time" else ""))
            conds.append(col != "")
            return and_(*conds)
        _check_dt(key.kind, value)
        return col.like(value + "%") if key.kind == "time" else col == value
    if key.kind == "int":
        try:
            return col == int(value)
        except ValueError as exc:
            raise InvalidInput(f"not an integer: {value!r}") from exc
    if key.kind == "modalities":
        wanted = [m for m in value.split("\\") if m]
        sub = select(Series.study_pk).where(Series.modality.in_(wanted))
        return Study.id.in_(sub)
    wildcard = "*" in value or "?" in value
    if key.kind == "pn" and case_insensitive_pn:
        target = func.lower(col)
        value = value.lower()
    else:
        target = col
    if wildcard:
        return target.like(_like_pattern(value), escape="\\")
    if key.kind == "pn":
        # PN: a value without '^' also matches the family-name component (common PACS behaviour)
        return or_(target == value, target.like(_like_pattern(value) + "^%", escape="\\"))
    return target == value


def _check_dt(kind: str, value: str) -> None:
    if not value:
        return
    ok = value.replace(".", "").isdigit() if kind == "time" else (value.isdigit() and len(value) == 8)
    if not ok:
        raise InvalidInput(
            f"bad {'time (HHMMSS)' if kind == 'time' else 'date (YYYYMMDD)'} value: {value!r}"
        )


def _apply(stmt: Select, keys: Mapping[str, Key], filters: Mapping[str, str], ci: bool) -> Select:
    for keyword, value in filters.items():
        key = keys.get(keyword)
        if key is None:
            continue  # callers decide whether unknown keys are an error
        cond = condition(key, value, case_insensitive_pn=ci)
        if cond is not None:
            stmt = stmt.where(cond)
    return stmt


def find_patients(s: Session, filters: Mapping[str, str], *, limit: int | None = None,
                  offset: int = 0, case_insensitive_pn: bool = True) -> list[Patient]:
    stmt = _apply(select(Patient), PATIENT_KEYS, filters, case_insensitive_pn)
    stmt = stmt.order_by(Patient.id).offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    return list(s.scalars(stmt))


def find_studies(s: Session, filters: Mapping[str, str], *, limit: int | None = None,
                 offset: int = 0, case_insensitive_pn: bool = True) -> list[Study]:
    """Studies matching ``filters`` (DICOM keywords -> values), newest first."""
    stmt = select(Study).join(Study.patient).options(joinedload(Study.patient))
    stmt = _apply(stmt, STUDY_KEYS, filters, case_insensitive_pn)
    stmt = stmt.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id.desc())
    stmt = stmt.offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    return list(s.scalars(stmt).unique())


def find_series(s: Session, filters: Mapping[str, str], *, limit: int | None = None,
                offset: int = 0, case_insensitive_pn: bool = True) -> list[Series]:
    stmt = (select(Series).join(Series.study).join(Study.patient)
            .options(joinedload(Series.study).joinedload(Study.patient)))
    stmt = _apply(stmt, {**STUDY_KEYS, **SERIES_KEYS}, filters, case_insensitive_pn)
    stmt = stmt.order_by(Series.series_number, Series.id).offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    return list(s.scalars(stmt).unique())


def find_instances(s: Session, filters: Mapping[str, str], *, limit: int | None = None,
                   offset: int = 0, case_insensitive_pn: bool = True) -> list[Instance]:
    stmt = (select(Instance).join(Instance.series).join(Series.study).join(Study.patient)
            .options(joinedload(Instance.series).joinedload(Series.study).joinedload(Study.patient)))
    stmt = _apply(stmt, {**STUDY_KEYS, **SERIES_KEYS, **INSTANCE_KEYS}, filters,
                  case_insensitive_pn)
    stmt = stmt.order_by(Instance.instance_number, Instance.id).offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    return list(s.scalars(stmt).unique())


@dataclass
class StudyCounts:
    modalities: list[str]
    series: int
    instances: int


def study_counts(s: Session, study_pks: list[int]) -> dict[int, StudyCounts]:
    """ModalitiesInStudy, NumberOfStudyRelatedSeries/Instances for the given studies."""
    out: dict[int, StudyCounts] = {pk: StudyCounts([], 0, 0) for pk in study_pks}
    if not study_pks:
        return out
    for pk, modality in s.execute(
        select(Series.study_pk, Series.modality).where(Series.study_pk.in_(study_pks)).distinct()
    ):
        if modality and modality not in out[pk].modalities:
            out[pk].modalities.append(modality)
    for pk, nseries, ninst in s.execute(
        select(Series.study_pk, func.count(distinct(Series.id)), func.count(Instance.id))
        .join(Instance, Instance.series_pk == Series.id, isouter=True)
        .where(Series.study_pk.in_(study_pks)).group_by(Series.study_pk)
    ):
        out[pk].series, out[pk].instances = nseries, ninst
    for c in out.values():
        c.modalities.sort()
    return out


def series_counts(s: Session, series_pks: list[int]) -> dict[int, int]:
    """NumberOfSeriesRelatedInstances for the given series."""
    if not series_pks:
        return {}
    rows = s.execute(select(Instance.series_pk, func.count(Instance.id))
                     .where(Instance.series_pk.in_(series_pks)).group_by(Instance.series_pk))
    return {pk: 0 for pk in series_pks} | dict(rows.all())


def get_study(s: Session, study_instance_uid: str) -> Study | None:
    return s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid)
                    .options(joinedload(Study.patient)))


def instances_of(s: Session, uid: str) -> list[Instance]:
    """All instances under a study, series or instance UID (whichever it is), in series order."""
    stmt = (select(Instance).join(Instance.series).join(Series.study)
            .where(or_(Study.study_instance_uid == uid, Series.series_instance_uid == uid,
                       Instance.sop_instance_uid == uid))
            .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id))
    return list(s.scalars(stmt))
