"""Modality Performed Procedure Step SCP (PS3.4 Annex F.7): N-CREATE and N-SET.

A modality announces a procedure with an N-CREATE (state IN PROGRESS) and reports its end with
an N-SET (COMPLETED or DISCONTINUED, with the Performed Series Sequence naming the series and
instances it made).  This module is the state machine and its durable record
(:class:`~hounsfield.ingest.models.PerformedProcedureStep`); the DIMSE handlers in
:mod:`hounsfield.ingest.scp` only call :func:`n_create` / :func:`n_set` and send the
:class:`Answer`.  The trigger that routes a completed procedure's study lives in
:mod:`hounsfield.deploy.mpps_trigger` (a worker), so the callbacks stay thin.

Every request is one transaction (the row, the referenced instances and the audit event commit
together, or nothing does) and is audited (PS3.15 A.5.3.10 Procedure Record), refused ones too.

Statuses (PS3.7 Annex C, PS3.4 F.7.2.1.3 / F.7.2.2.4):

======  ===========================================================================
0x0000  Success
0x0106  Invalid attribute value: N-CREATE with a state other than IN PROGRESS
        (F.7.2.1.3), an N-SET to a state that is not IN PROGRESS / COMPLETED /
        DISCONTINUED, a UID that is not a UID
0x0110  Processing failure; with Error ID (0000,0903) A710 and the ErrorComment
        "Performed Procedure Step Object may no longer be updated": an N-SET on a
        COMPLETED or DISCONTINUED instance (Table F.7.2-2)
0x0111  Duplicate SOP instance: N-CREATE of an SOP Instance UID we already hold
0x0112  No such SOP instance: N-SET of an instance never created here
0x0117  Invalid object instance: an Affected / Requested SOP Instance UID that is not a UID
0x0120  Missing attribute: a Type 1 N-CREATE attribute (Table F.7.2-1) absent, or
        COMPLETED without a Performed Series Sequence naming its series
0x0121  Missing attribute value: a Type 1 attribute present but empty
======  ===========================================================================

The ErrorComment always names what was wrong.  Read leniently: Type 2 attributes a modality
leaves out are accepted (and listed in the audit detail); attributes the N-SET may not change
(Table F.7.2-1 "Not allowed", e.g. the Scheduled Step Attributes Sequence, patient and start
attributes) are ignored, not applied, and listed too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from hounsfield import audit
from hounsfield.archive.archive import Archive
from hounsfield.archive.models import utcnow
from hounsfield.dicom.status import status_dataset
from hounsfield.dicom.uids import is_lenient_uid
from hounsfield.ingest.models import PerformedInstance, PerformedProcedureStep

log = logging.getLogger(__name__)

#: Modality Performed Procedure Step SOP Class (PS3.4 F.7.1)
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL = (COMPLETED, DISCONTINUED)

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
#: PS3.4 Table F.7.2-2: the N-SET status, Error ID and Error Comment for a finished step
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"
NO_LONGER_UPDATABLE_ID = 0xA710

#: Type 1 attributes of the N-CREATE (PS3.4 Table F.7.2-1, SCU column)
CREATE_TYPE1 = ("ScheduledStepAttributesSequence", "PerformedProcedureStepID",
                "PerformedStationAETitle", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality")
#: Type 2 attributes of the N-CREATE (present, may be empty) we look for
CREATE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "ReferencedPatientSequence", "PerformedStationName", "PerformedLocation",
                "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                "PerformedProcedureStepDescription", "PerformedProcedureTypeDescription",
                "ProcedureCodeSequence", "StudyID", "PerformedProtocolCodeSequence",
                "PerformedSeriesSequence")
#: attributes Table F.7.2-1 does not allow in an N-SET (ignored when a modality sends them)
SET_NOT_ALLOWED = ("ScheduledStepAttributesSequence", "PatientName", "PatientID",
                   "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                   "ReferencedPatientSequence", "PerformedProcedureStepID",
                   "PerformedStationAETitle", "PerformedStationName", "PerformedLocation",
                   "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                   "Modality", "StudyID", "SOPClassUID", "SOPInstanceUID")


@dataclass
class Answer:
    """What the SCP answers (Status, ErrorComment, Error ID) and what it did."""

    status: int
    comment: str = ""
    error_id: int | None = None
    #: N-CREATE without an Affected SOP Instance UID: the UID we assigned (PS3.7 10.1.5.1.4)
    sop_instance_uid: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def status_dataset(self) -> Dataset:
        ds = status_dataset(self.status, self.comment)
        if self.error_id is not None:
            ds.ErrorID = self.error_id
        return ds


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    t = tag_for_keyword(keyword.lstrip(">"))
    return f"({t >> 16:04X},{t & 0xFFFF:04X}) {keyword}" if t is not None else keyword


def _missing(keyword: str, why: str = "") -> Answer:
    return Answer(MISSING_ATTRIBUTE, f"missing {_tag(keyword)}{why}")


def _empty(keyword: str) -> Answer:
    return Answer(MISSING_ATTRIBUTE_VALUE, f"no value for {_tag(keyword)}")


def _text(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    return "" if v is None or v == "" else str(v).strip()


# -- the state machine (pure; PS3.4 F.7.2.1 / F.7.2.2) -----------------------------------------
def check_create(ds: Dataset) -> Answer | None:
    """The problem with an N-CREATE Attribute List, or None (F.7.2.1.3: the state must be
    IN PROGRESS; Table F.7.2-1: the Type 1 attributes, with a Study Instance UID in every item
    of the Scheduled Step Attributes Sequence)."""
    for kw in CREATE_TYPE1:
        if kw not in ds:
            return _missing(kw)
        value = ds[kw].value
        if value is None or value == "" or (kw.endswith("Sequence") and len(value) == 0):
            return _empty(kw)
    state = _text(ds, "PerformedProcedureStepStatus")
    if state != IN_PROGRESS:
        return Answer(INVALID_ATTRIBUTE_VALUE,
                      f"(0040,0252) is {state!r}: an N-CREATE must be IN PROGRESS")
    for i, item in enumerate(ds.ScheduledStepAttributesSequence):
        if "StudyInstanceUID" not in item:
            return _missing(">StudyInstanceUID", f" in scheduled step item {i + 1}")
        uid = _text(item, "StudyInstanceUID")
        if not uid:
            return _empty(">StudyInstanceUID")
        if not is_lenient_uid(uid):
            return Answer(INVALID_ATTRIBUTE_VALUE, f"StudyInstanceUID is not a UID: {uid[:40]}")
    return None


def check_set(current_state: str, mods: Dataset) -> Answer | None:
    """The problem with an N-SET on an instance in ``current_state``, or None (F.7.2.2: a
    COMPLETED or DISCONTINUED step may no longer be updated, Table F.7.2-2)."""
    if current_state in FINAL:
        return Answer(PROCESSING_FAILURE, NO_LONGER_UPDATABLE, NO_LONGER_UPDATABLE_ID)
    if "PerformedProcedureStepStatus" in mods:
        state = _text(mods, "PerformedProcedureStepStatus")
        if state not in STATES:
            return Answer(INVALID_ATTRIBUTE_VALUE,
                          f"(0040,0252) {state!r} is not IN PROGRESS, COMPLETED or DISCONTINUED")
    return None


def merge(stored: Dataset, mods: Dataset) -> tuple[Dataset, list[str]]:
    """The instance after an N-SET: each attribute in the Modification List replaces the stored
    one (a sequence as a whole, PS3.7 10.1.3); attributes an N-SET may not change are left as
    they were.  Returns the new data set and the keywords ignored."""
    out = Dataset()
    out.update(stored)
    ignored = []
    for elem in mods:
        if elem.keyword in SET_NOT_ALLOWED:
            ignored.append(elem.keyword)
            continue
        out[elem.tag] = elem
    return out, ignored


def check_final(ds: Dataset) -> Answer | None:
    """COMPLETED needs the Performed Series Sequence naming each series (Final State Type 1,
    Table F.7.2-1): that is what the trigger waits for."""
    if _text(ds, "PerformedProcedureStepStatus") != COMPLETED:
        return None
    seq = ds.get("PerformedSeriesSequence")
    if not seq:
        return _missing("PerformedSeriesSequence", ": needed for COMPLETED")
    for i, item in enumerate(seq):
        uid = _text(item, "SeriesInstanceUID")
        if not uid:
            return _missing(">SeriesInstanceUID", f" in performed series {i + 1}")
        if not is_lenient_uid(uid):
            return Answer(INVALID_ATTRIBUTE_VALUE, f"SeriesInstanceUID is not a UID: {uid[:40]}")
    return None


def performed_instances(ds: Dataset) -> list[tuple[str, str, str]]:
    """(series UID, SOP Instance UID, SOP Class UID) of every instance the Performed Series
    Sequence references (Referenced Image Sequence and Referenced Non-Image Composite SOP
    Instance Sequence), each once."""
    out: dict[str, tuple[str, str, str]] = {}
    for series in ds.get("PerformedSeriesSequence") or []:
        series_uid = _text(series, "SeriesInstanceUID")
        for kw in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(kw) or []:
                sop = _text(ref, "ReferencedSOPInstanceUID")
                if sop and is_lenient_uid(sop) and sop not in out:
                    out[sop] = (series_uid, sop, _text(ref, "ReferencedSOPClassUID"))
    return list(out.values())


def study_uids(ds: Dataset) -> list[str]:
    """The Study Instance UIDs of the Scheduled Step Attributes Sequence, each once."""
    out: list[str] = []
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        uid = _text(item, "StudyInstanceUID")
        if uid and uid not in out:
            out.append(uid)
    return out


def _accession(ds: Dataset) -> str:
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        if _text(item, "AccessionNumber"):
            return _text(item, "AccessionNumber")
    return ""


# -- the service (durable) ---------------------------------------------------------------------
def _to_json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=1 << 30)


def _from_json(d: dict[str, Any]) -> Dataset:
    return Dataset.from_json(d)


def _subject(obj: Any) -> tuple[str, str]:
    """(study UID, patient ID) of an MPPS row or an N-CREATE attribute list, for the audit."""
    if isinstance(obj, Dataset):
        return (study_uids(obj) or [""])[0], _text(obj, "PatientID")
    if isinstance(obj, PerformedProcedureStep):
        return obj.study_instance_uid, obj.patient_id
    return obj if isinstance(obj, tuple) else ("", "")


def _entry(action: audit.Action, calling_ae: str, source: str, subject: Any, ok: bool,
           detail: str) -> audit.Entry:
    study, patient = _subject(subject)
    return audit.Entry(action=action, actor=calling_ae or "?", role="DICOM peer", source=source,
                       study_instance_uid=study, patient_id=patient, detail=detail,
                       outcome=audit.Outcome.SUCCESS if ok else audit.Outcome.MAJOR_FAILURE)


def _refused(archive: Archive, action: audit.Action, calling_ae: str, source: str,
             subject: Any, sop_uid: str, answer: Answer) -> Answer:
    verb = "N-CREATE" if action is audit.Action.MPPS_CREATE else "N-SET"
    log.warning("MPPS %s %s from %s refused (0x%04X): %s", verb, sop_uid, source, answer.status,
                answer.comment)
    try:
        audit.record(archive, _entry(action, calling_ae, source, subject, False,
                                     f"MPPS {sop_uid}: refused 0x{answer.status:04X}: "
                                     f"{answer.comment}"))
    except Exception as exc:  # noqa: BLE001 - the refusal is answered even if the log is down
        log.error("cannot audit the refused MPPS %s: %s", verb, exc)
    return answer


def n_create(archive: Archive, attrs: Dataset, sop_uid: str | None, *, calling_ae: str,
             source: str) -> Answer:
    """Create an MPPS instance (PS3.4 F.7.2.1).  ``sop_uid``: the request's Affected SOP
    Instance UID, or None (then we assign one and answer it).  Never raises."""
    action = audit.Action.MPPS_CREATE
    if sop_uid is not None and not is_lenient_uid(str(sop_uid)):
        return _refused(archive, action, calling_ae, source, attrs, str(sop_uid), Answer(
            INVALID_OBJECT_INSTANCE, f"Affected SOP Instance UID is not a UID: {sop_uid!s:.30}"))
    uid = str(sop_uid) if sop_uid else generate_uid()
    problem = check_create(attrs)
    if problem is not None:
        return _refused(archive, action, calling_ae, source, attrs, uid, problem)
    notes = [kw for kw in CREATE_TYPE2 if kw not in attrs]
    studies = study_uids(attrs)
    try:
        row = PerformedProcedureStep(
            sop_instance_uid=uid, state=IN_PROGRESS, study_instance_uid=studies[0],
            study_uids=studies, patient_id=_text(attrs, "PatientID")[:64],
            accession_number=_accession(attrs)[:16], modality=_text(attrs, "Modality")[:16],
            pps_id=_text(attrs, "PerformedProcedureStepID")[:16],
            description=_text(attrs, "PerformedProcedureStepDescription")[:64],
            calling_ae=calling_ae[:16], dataset=_to_json(attrs),
            note=("Type 2 attributes absent: " + ", ".join(notes)) if notes else "")
        detail = f"MPPS {uid} created IN PROGRESS ({row.modality}, step {row.pps_id})" + (
            f"; absent Type 2: {', '.join(notes)}" if notes else "")
        with archive.write_session() as s, s.begin():
            if s.scalar(select(PerformedProcedureStep.id)
                        .where(PerformedProcedureStep.sop_instance_uid == uid)) is not None:
                raise _Duplicate
            s.add(row)
            s.add(_entry(action, calling_ae, source, row, True, detail).row())
    except (_Duplicate, IntegrityError):  # IntegrityError: another node created it meanwhile
        return _refused(archive, action, calling_ae, source, attrs, uid, Answer(
            DUPLICATE_SOP_INSTANCE, "an MPPS with this SOP Instance UID already exists"))
    except Exception as exc:  # noqa: BLE001 - a database failure is a status, never a crash
        log.exception("MPPS N-CREATE %s failed", uid)
        return Answer(PROCESSING_FAILURE, f"cannot record the MPPS: {type(exc).__name__}")
    log.info("MPPS %s from %s: IN PROGRESS, study %s", uid, source, studies[0])
    return Answer(SUCCESS, sop_instance_uid=uid if sop_uid is None else "", notes=notes)


def n_set(archive: Archive, sop_uid: str, mods: Dataset, *, calling_ae: str,
          source: str) -> Answer:
    """Update an MPPS instance (PS3.4 F.7.2.2): merge the Modification List; a change to
    COMPLETED or DISCONTINUED records the Performed Series Sequence's instances for the
    trigger.  All of it in one transaction, or nothing.  Never raises."""
    action = audit.Action.MPPS_SET
    sop_uid = str(sop_uid or "")
    if not is_lenient_uid(sop_uid):
        return _refused(archive, action, calling_ae, source, None, sop_uid, Answer(
            INVALID_OBJECT_INSTANCE, f"Requested SOP Instance UID is not a UID: {sop_uid:.30}"))
    try:
        with archive.write_session() as s, s.begin():
            row = s.scalars(select(PerformedProcedureStep)
                            .where(PerformedProcedureStep.sop_instance_uid == sop_uid)
                            .with_for_update()).first()
            if row is None:
                raise _Refuse(Answer(NO_SUCH_SOP_INSTANCE,
                                     "no MPPS with this SOP Instance UID was created here"), None)
            answer = _apply_set(s, row, mods, calling_ae, source)
            if not answer.ok:  # leaving the block by an exception rolls everything back
                raise _Refuse(answer, (row.study_instance_uid, row.patient_id))
    except _Refuse as refusal:
        return _refused(archive, action, calling_ae, source, refusal.subject, sop_uid,
                        refusal.answer)
    except Exception as exc:  # noqa: BLE001 - a database failure is a status, never a crash
        log.exception("MPPS N-SET %s failed", sop_uid)
        return Answer(PROCESSING_FAILURE, f"cannot update the MPPS: {type(exc).__name__}")
    return answer


class _Duplicate(Exception):
    pass


class _Refuse(Exception):
    """Leaves the N-SET's transaction (rolled back) with the answer to send."""

    def __init__(self, answer: Answer, subject: tuple[str, str] | None) -> None:
        super().__init__(answer.comment)
        self.answer = answer
        self.subject = subject


def _apply_set(s, row: PerformedProcedureStep, mods: Dataset, calling_ae: str,  # noqa: ANN001
               source: str) -> Answer:
    problem = check_set(row.state, mods)
    if problem is not None:
        return problem
    new, ignored = merge(_from_json(row.dataset), mods)
    problem = check_final(new)
    if problem is not None:
        return problem
    state = _text(new, "PerformedProcedureStepStatus") or row.state
    now = utcnow()
    refs = performed_instances(new) if state in FINAL else []
    row.dataset = _to_json(new)
    row.updated_at = now
    row.description = _text(new, "PerformedProcedureStepDescription")[:64] or row.description
    notes = [f"not allowed in an N-SET, ignored: {', '.join(ignored)}"] if ignored else []
    if state in FINAL:
        row.state = state
        row.ended_at = now
        row.n_referenced = len(refs)
        row.trigger_state = "waiting" if state == COMPLETED else "discontinued"
        s.add_all(PerformedInstance(mpps_pk=row.id, series_instance_uid=series[:64],
                                    sop_instance_uid=sop[:64], sop_class_uid=cls[:64])
                  for series, sop, cls in refs)
    detail = (f"MPPS {row.sop_instance_uid} {row.state}"
              + (f": {len(refs)} instance(s) in {len({r[0] for r in refs})} series"
                 if state in FINAL else " (updated)")
              + (f"; {'; '.join(notes)}" if notes else ""))
    if state == DISCONTINUED:
        reason = _discontinuation(new)
        detail += "; discontinued" + (f" ({reason})" if reason else "") + ": not routed"
        row.note = _join(row.note, "discontinued" + (f": {reason}" if reason else ""))
    if notes:
        row.note = _join(row.note, notes[0])
    s.add(_entry(audit.Action.MPPS_SET, calling_ae, source, row, True, detail).row())
    log.info("MPPS %s from %s: %s", row.sop_instance_uid, source, detail)
    return Answer(SUCCESS, notes=notes)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _discontinuation(ds: Dataset) -> str:
    """The Performed Procedure Step Discontinuation Reason Code Sequence's meaning(s)."""
    seq = ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []
    return ", ".join(_text(i, "CodeMeaning") or _text(i, "CodeValue") for i in seq)


# -- reading -----------------------------------------------------------------------------------
def list_mpps(archive: Archive, *, state: str | None = None, trigger_state: str | None = None,
              study_uid: str | None = None, limit: int = 200) -> list[PerformedProcedureStep]:
    """MPPS instances, newest first (filter by state, trigger state, study)."""
    q = select(PerformedProcedureStep).order_by(PerformedProcedureStep.id.desc())
    if state:
        q = q.where(PerformedProcedureStep.state.in_([x.strip().upper()
                                                      for x in state.split(",")]))
    if trigger_state:
        q = q.where(PerformedProcedureStep.trigger_state.in_(
            [x.strip() for x in trigger_state.split(",")]))
    if study_uid:
        q = q.where(PerformedProcedureStep.study_instance_uid == study_uid)
    with archive.session() as s:
        return list(s.scalars(q.limit(max(1, min(limit, 1000)))))


def get_mpps(archive: Archive, sop_uid: str) -> PerformedProcedureStep | None:
    with archive.session() as s:
        return s.scalars(select(PerformedProcedureStep)
                         .where(PerformedProcedureStep.sop_instance_uid == sop_uid)).first()


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def mpps_dict(row: PerformedProcedureStep, *, with_dataset: bool = False) -> dict[str, Any]:
    """The JSON form of one MPPS (``/api/mpps``, ``hounsfield mpps list --json``)."""
    d = {"sop_instance_uid": row.sop_instance_uid, "state": row.state,
         "study_instance_uid": row.study_instance_uid, "study_uids": list(row.study_uids),
         "patient_id": row.patient_id, "accession_number": row.accession_number,
         "modality": row.modality, "pps_id": row.pps_id, "description": row.description,
         "calling_ae": row.calling_ae, "n_referenced": row.n_referenced,
         "trigger_state": row.trigger_state, "n_missing": row.n_missing,
         "missing": list(row.missing), "route_outcome": row.route_outcome,
         "job_id": row.job_id, "note": row.note, "created_at": _iso(row.created_at),
         "updated_at": _iso(row.updated_at), "ended_at": _iso(row.ended_at),
         "fired_at": _iso(row.fired_at)}
    if with_dataset:
        d["dataset"] = row.dataset
    return d
