"""Delivery log: every instance the SCU side sent (C-STORE) or asked for (C-MOVE / C-GET)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow


class Delivery(Base):
    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    operation: Mapped[str] = mapped_column(String(16))          # C-STORE | C-MOVE | C-GET
    destination: Mapped[str] = mapped_column(String(256), index=True)  # AE@host:port
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int] = mapped_column(Integer)                # DIMSE status (or -1: no assoc)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[str] = mapped_column(Text, default="")
