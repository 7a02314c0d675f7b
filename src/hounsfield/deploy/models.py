"""Tables of the clinical pipeline: AI jobs and the routing record of every trigger.

An :class:`AiJob` is our view of one durable DBOS workflow (the engine's own state lives in its
system database): what it runs on, with which model version, where its results go, and what
happened (state, log, error, result UIDs).  A :class:`RouteEvent` records every trigger and its
outcome — including "no rule matched", which creates no job.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow

#: job states; "dead" = failed for good (retries exhausted or a permanent error), re-queueable
JOB_STATES = ("queued", "running", "exporting", "done", "failed", "dead", "cancelled",
              "superseded")
ACTIVE_STATES = ("queued", "running", "exporting")


class AiJob(Base):
    __tablename__ = "ai_job"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: sha256 of (input series content, model version, output profile): one job per key
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(96), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    trigger: Mapped[str] = mapped_column(String(32), default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    rule: Mapped[str] = mapped_column(String(128), default="")
    model_ref: Mapped[str] = mapped_column(String(160), default="")
    model_version: Mapped[str] = mapped_column(String(160), default="")
    device_uid: Mapped[str] = mapped_column(String(64), default="")
    #: findings below it are not reported: the operating point of the evaluation that
    #: justified the model's promotion (None: the model's own threshold only)
    operating_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    profile: Mapped[str] = mapped_column(String(32), default="")
    destinations: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    log: Mapped[list] = mapped_column(JSON, default=list)
    result_uids: Mapped[list] = mapped_column(JSON, default=list)
    n_findings: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: per finding: label, centre mm, diameter, volume, probability, tracking UID, the source
    #: slice and the key image it is shown on (the console links into OHIF with them)
    findings: Mapped[list] = mapped_column(JSON, default=list)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    superseded_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RouteEvent(Base):
    __tablename__ = "route_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: what fired ("stable:<event id>", "manual:<uuid>"): one record per trigger
    trigger_key: Mapped[str] = mapped_column(String(128), unique=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    trigger: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128), default="")
    #: job | unchanged | no-rule | no-series | error | discontinued (MPPS, not routed)
    outcome: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(128), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="")
    log: Mapped[list] = mapped_column(JSON, default=list)


# -- UPS-RS (PS3.4 Annex CC, PS3.18 §11) -----------------------------------------------------

#: Procedure Step State (0074,1000) values (PS3.4 Table CC.1.1-1)
UPS_STATES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED")


class UpsWorkitem(Base):
    """One UPS instance (a Workitem): its DICOM JSON and the columns searches and the
    performer need.  The Transaction UID (the lock of an IN PROGRESS workitem) is kept here
    only, never in ``dataset`` — a Retrieve must not reveal it (PS3.18 §11.5.2)."""

    __tablename__ = "ups_workitem"

    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), default="")
    #: the workitem in DICOM JSON (PS3.18 Annex F), Transaction UID removed
    dataset: Mapped[dict] = mapped_column(JSON, default=dict)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    #: "hounsfield" once our performer claimed it (then ``job_id`` names the AI job)
    performer: Mapped[str] = mapped_column(String(32), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="")
    #: a Request Cancellation arrived while IN PROGRESS: the performer honours it
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    #: last progress (percent) reported, so a report is sent only when it changes
    progress: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UpsSubscription(Base):
    """A subscriber (AE title) to one workitem, to the whole worklist (``kind`` "global",
    workitem_uid "") or to the workitems matching ``filter`` ("filtered").  A suspended global
    subscription subscribes the AE to no new workitems; its workitem subscriptions stay."""

    __tablename__ = "ups_subscription"
    __table_args__ = (UniqueConstraint("ae_title", "kind", "workitem_uid",
                                       name="uq_ups_subscription"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # workitem | global | filtered
    workitem_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    filter: Mapped[dict] = mapped_column(JSON, default=dict)
    deletion_lock: Mapped[bool] = mapped_column(Boolean, default=False)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UpsEvent(Base):
    """A pending (or sent) UPS Event Report for one subscriber: the outbox that any web
    process's WebSocket channel for that AE title drains, oldest first (at least once)."""

    __tablename__ = "ups_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    workitem_uid: Mapped[str] = mapped_column(String(64))
    #: Event Type ID (0000,1002): 1 state report, 2 cancel requested, 3 progress, 5 assigned
    event_type: Mapped[int] = mapped_column(Integer)
    #: the Event Report in DICOM JSON
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True, index=True)


class UpsMirror(Base):
    """Hounsfield as UPS Requester: the workitem mirroring one AI job on an external UPS-RS
    manager, and how far the mirror got (so a restart resumes, never duplicates)."""

    __tablename__ = "ups_mirror"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workitem_uid: Mapped[str] = mapped_column(String(64))
    transaction_uid: Mapped[str] = mapped_column(String(64))
    #: "" (not created) | SCHEDULED | IN PROGRESS | COMPLETED | CANCELED: last state the
    #: manager acknowledged
    state: Mapped[str] = mapped_column(String(16), default="")
    progress: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
