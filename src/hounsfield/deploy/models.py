"""Tables of the clinical pipeline: AI jobs and the routing record of every trigger.

An :class:`AiJob` is our view of one durable DBOS workflow (the engine's own state lives in its
system database): what it runs on, with which model version, where its results go, and what
happened (state, log, error, result UIDs).  A :class:`RouteEvent` records every trigger and its
outcome — including "no rule matched", which creates no job.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
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
