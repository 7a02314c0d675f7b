"""Study-stable events: a series / study had no new instance for the quiet period.

Rows are the durable record a router (deploy/) reads; one row per (level, uid, quiet point),
so a study that receives more instances after becoming stable gets a new row when it settles
again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String
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
