"""Ingest's durable records: study-stable events and Modality Performed Procedure Steps.

Stable-event rows are the durable record a router (deploy/) reads; one row per (level, uid,
quiet point), so a study that receives more instances after becoming stable gets a new row when
it settles again.  MPPS rows (:mod:`hounsfield.ingest.mpps`) are what modalities reported.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow


class StableEvent(Base):
    __tablename__ = "stable_event"
    __table_args__ = (Index("ix_stable_event_uid", "level", "uid", "last_received_at",
                            unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(8))  # "STUDY" | "SERIES"
    uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: the last reception the quiet period was counted from (Study/Series.last_received_at)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stable_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                index=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)


class PerformedProcedureStep(Base):
    """One Modality Performed Procedure Step SOP Instance (PS3.4 Annex F) created by a modality's
    N-CREATE and updated by its N-SETs; ``dataset`` is the instance's current attributes
    (DICOM JSON, PS3.18 F.2).  ``trigger_state`` is what the MPPS trigger made of it:

    ``""`` (IN PROGRESS) -> ``waiting`` (COMPLETED, instances still arriving) -> ``fired`` (the
    pipeline was asked once, ``route_outcome`` / ``job_id``), or ``mismatch`` (not all arrived
    after ``[mpps] mismatch_wait_s``; ``missing``), ``discontinued`` (never routed),
    ``back-catalogue`` (completed before the pipeline was enabled).
    """

    __tablename__ = "mpps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    #: Performed Procedure Step Status (0040,0252): IN PROGRESS | COMPLETED | DISCONTINUED
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: the first Study Instance UID of the Scheduled Step Attributes Sequence; all of them below
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uids: Mapped[list] = mapped_column(JSON, default=list)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    pps_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    #: the calling AE title of the association that created it (the modality)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    dataset: Mapped[dict] = mapped_column(JSON, default=dict)
    n_referenced: Mapped[int] = mapped_column(Integer, default=0)
    trigger_state: Mapped[str] = mapped_column(String(16), default="", index=True)
    missing: Mapped[list] = mapped_column(JSON, default=list)
    n_missing: Mapped[int] = mapped_column(Integer, default=0)
    route_outcome: Mapped[str] = mapped_column(String(16), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: when the N-SET set COMPLETED or DISCONTINUED
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PerformedInstance(Base):
    """An instance a COMPLETED / DISCONTINUED MPPS says it produced (Performed Series Sequence >
    Referenced Image Sequence, or > Referenced Non-Image Composite SOP Instance Sequence)."""

    __tablename__ = "mpps_instance"
    __table_args__ = (Index("ix_mpps_instance_mpps_sop", "mpps_pk", "sop_instance_uid",
                            unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mpps_pk: Mapped[int] = mapped_column(ForeignKey("mpps.id", ondelete="CASCADE"))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
