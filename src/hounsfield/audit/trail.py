"""Recording and querying audit events (PS3.15 A.5)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from hounsfield.archive.archive import Archive
from hounsfield.audit.models import AuditEvent


class Outcome(IntEnum):
    """PS3.15 A.5.3 EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class Action(StrEnum):
    """Our action keywords and the DICOM audit EventID (DCM code) each maps to."""

    QIDO = "QIDO"
    WADO = "WADO"
    STOW = "STOW"
    C_STORE = "C-STORE"
    C_FIND = "C-FIND"
    C_MOVE = "C-MOVE"
    C_GET = "C-GET"
    EXPORT = "EXPORT"
    IMPORT = "IMPORT"
    DEIDENTIFY = "DEIDENTIFY"
    REIDENTIFY = "REIDENTIFY"
    LOGIN = "LOGIN"
    LOGOUT = "LOGOUT"
    VIEW = "VIEW"
    DELETE = "DELETE"
    AI_JOB = "AI-JOB"
    MODEL_PROMOTE = "MODEL-PROMOTE"
    MODEL_DEMOTE = "MODEL-DEMOTE"
    MODEL_ROLLBACK = "MODEL-ROLLBACK"
    UPS = "UPS"
    MPPS_CREATE = "MPPS-N-CREATE"
    MPPS_SET = "MPPS-N-SET"
    STORAGE_COMMITMENT = "STORAGE-COMMITMENT"


#: action -> (EventID as "code meaning", EventActionCode)
EVENT_IDS: dict[Action, tuple[str, str]] = {
    Action.QIDO: ("110112 Query", "E"),
    Action.C_FIND: ("110112 Query", "E"),
    Action.WADO: ("110103 DICOM Instances Accessed", "R"),
    Action.VIEW: ("110103 DICOM Instances Accessed", "R"),
    Action.STOW: ("110104 DICOM Instances Transferred", "C"),
    Action.C_STORE: ("110104 DICOM Instances Transferred", "C"),
    Action.IMPORT: ("110107 Import", "C"),
    Action.C_MOVE: ("110104 DICOM Instances Transferred", "R"),
    Action.C_GET: ("110104 DICOM Instances Transferred", "R"),
    Action.EXPORT: ("110106 Export", "R"),
    Action.DEIDENTIFY: ("110106 Export", "R"),
    Action.REIDENTIFY: ("110110 Patient Record", "R"),
    Action.LOGIN: ("110114 User Authentication", "E"),
    Action.LOGOUT: ("110114 User Authentication", "E"),
    Action.DELETE: ("110105 DICOM Study Deleted", "D"),
    Action.STORAGE_COMMITMENT: ("110103 DICOM Instances Accessed", "R"),
    Action.AI_JOB: ("110100 Application Activity", "E"),
    # which model version clinical routing uses is a software configuration change
    # (PS3.15 A.5.3.11 Security Alert, EventTypeCode 110131 "Software Configuration")
    Action.MODEL_PROMOTE: ("110113 Security Alert", "U"),
    Action.MODEL_DEMOTE: ("110113 Security Alert", "U"),
    Action.MODEL_ROLLBACK: ("110113 Security Alert", "U"),
    # a workitem (UPS) created, changed, claimed, completed or canceled
    Action.UPS: ("110100 Application Activity", "U"),
    # a modality's performed procedure step created / updated (PS3.15 A.5.3.10 Procedure Record)
    Action.MPPS_CREATE: ("110111 Procedure Record", "C"),
    Action.MPPS_SET: ("110111 Procedure Record", "U"),
}


@dataclass
class Entry:
    """One audit message to record."""

    action: Action
    actor: str
    outcome: Outcome = Outcome.SUCCESS
    role: str = ""
    source: str = ""
    destination: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    detail: str = ""
    occurred_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def row(self) -> AuditEvent:
        event_id, event_action = EVENT_IDS[self.action]
        kw = {} if self.occurred_at is None else {"occurred_at": self.occurred_at}
        return AuditEvent(
            action=self.action.value, event_id=event_id, event_action=event_action,
            outcome=int(self.outcome), actor=self.actor[:128], role=self.role[:64],
            source=self.source[:256], destination=self.destination[:256],
            study_instance_uid=self.study_instance_uid[:64], patient_id=self.patient_id[:64],
            detail=self.detail, **kw,
        )


def record(archive: Archive, entry: Entry) -> None:
    """Write one audit event (its own short transaction)."""
    record_many(archive, [entry])


def record_many(archive: Archive, entries: Iterable[Entry]) -> None:
    rows = [e.row() for e in entries]
    if not rows:
        return
    with archive.write_session() as s, s.begin():
        s.add_all(rows)


def query(s: Session, filters: Mapping[str, str] | None = None, *, since: datetime | None = None,
          until: datetime | None = None, limit: int = 200, offset: int = 0) -> list[AuditEvent]:
    """Audit events, newest first, filtered by exact ``action``/``actor``/``study_instance_uid``/
    ``outcome``/``role``/``source``."""
    stmt = select(AuditEvent)
    for key, value in (filters or {}).items():
        if value in (None, ""):
            continue
        col = getattr(AuditEvent, key, None)
        if col is None or key in ("id", "detail"):
            from hounsfield.errors import InvalidInput

            raise InvalidInput(f"cannot filter audit events by {key!r}")
        stmt = stmt.where(col == (int(value) if key == "outcome" else value))
    if since:
        stmt = stmt.where(AuditEvent.occurred_at >= since)
    if until:
        stmt = stmt.where(AuditEvent.occurred_at <= until)
    stmt = stmt.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc()).offset(offset).limit(limit)
    return list(s.scalars(stmt))
