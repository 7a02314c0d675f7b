"""Audit table (PS3.15 A.5.1 message fields flattened into columns)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    #: our action keyword: QIDO, WADO, STOW, C-STORE, C-FIND, C-MOVE, C-GET, EXPORT, LOGIN, ...
    action: Mapped[str] = mapped_column(String(32), index=True)
    #: DICOM EventID (PS3.15 A.5.3.1 / DCM 110xxx), e.g. "110103 DICOM Instances Accessed"
    event_id: Mapped[str] = mapped_column(String(64))
    #: EventActionCode: C create, R read, U update, D delete, E execute
    event_action: Mapped[str] = mapped_column(String(1))
    #: EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure, 12 major failure
    outcome: Mapped[int] = mapped_column(Integer, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(256), default="")  # IP address or AE@host
    destination: Mapped[str] = mapped_column(String(256), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
