"""Delivery log: every instance the SCU side sent (C-STORE) or asked for (C-MOVE / C-GET), and
the Storage Commitment requests we made of export destinations (PS3.4 Annex J) with the result
per instance.

Delivery-log operations: ``C-STORE`` / ``STOW-RS`` (an export destination's answer),
``C-MOVE`` / ``C-GET`` (pulls), ``COMMIT`` (the destination's Storage Commitment result for one
instance: 0x0000 committed, the Failure Reason it reported, or -5 when no N-EVENT-REPORT came
within the destination's ``commitment_timeout_s``).  For a destination whose profile asks for
commitment, an instance counts as acknowledged only when its latest ``COMMIT`` row is a success
(:func:`hounsfield.pacs.export.acknowledged`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow


class Delivery(Base):
    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    #: C-STORE | STOW-RS | C-MOVE | C-GET | COMMIT
    operation: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(256), index=True)  # AE@host:port
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int] = mapped_column(Integer)                # DIMSE status (or -1: no assoc)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[str] = mapped_column(Text, default="")


#: states of a commitment request: ``pending`` (N-ACTION accepted, no report yet),
#: ``committed`` (every instance), ``partial`` (some failed), ``failed`` (none committed),
#: ``timeout`` (no report within the destination's commitment_timeout_s), ``refused`` (the
#: N-ACTION itself failed: no association, a failure status)
COMMITMENT_STATES = ("pending", "committed", "partial", "failed", "timeout", "refused")
FINAL_STATES = ("committed", "partial", "failed", "timeout", "refused")


class CommitmentRequest(Base):
    """One Storage Commitment Push Model N-ACTION we sent (SCU side), by Transaction UID."""

    __tablename__ = "commitment_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), unique=True)
    destination: Mapped[str] = mapped_column(String(256), index=True)  # export destination name
    remote_ae: Mapped[str] = mapped_column(String(16), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    n_committed: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: how the N-EVENT-REPORT came: "same" association as the N-ACTION, or a "new" one
    report_via: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class CommitmentInstance(Base):
    """One instance of a commitment request and what the destination said about it."""

    __tablename__ = "commitment_instance"
    __table_args__ = (UniqueConstraint("transaction_uid", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    #: pending | committed | failed | timeout
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: the Failure Reason (0008,1197) the destination gave (PS3.4 J.3.3.1.1.1), if it failed
    failure_reason: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
