"""Storage Commitment requests peers made of us (SCP side), kept until the report is sent.

An N-ACTION answered with Success is a promise to report: the request and the report we
computed are written before the answer, so a node that stops before reporting sends it when
it starts again (:meth:`hounsfield.ingest.commitment.CommitmentService.resume`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow


class CommitmentInbound(Base):
    __tablename__ = "commitment_inbound"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: pending (report not sent yet) | reported | undeliverable (every attempt failed)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    #: {"committed": [[class, instance], ...], "failed": [[class, instance, reason], ...]}
    report: Mapped[dict] = mapped_column(JSON, default=dict)
    n_committed: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    via: Mapped[str] = mapped_column(String(16), default="")  # same | new
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
