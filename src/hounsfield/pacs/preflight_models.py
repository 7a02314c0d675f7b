"""Pre-flight results: what each export destination accepted when asked (hounsfield.pacs.preflight)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow


class DestinationPreflight(Base):
    """One pre-flight check of one destination (appended: the newest row is in force).

    ``outcome``: ``ok`` (everything the profile sends is accepted), ``warnings`` (something it
    asks for is refused), ``rejected`` (association rejected), ``unreachable`` (no association),
    ``not checkable`` (STOW-RS: no standard capabilities query).  ``accepted`` / ``refused``:
    ``[{kind, sop_class_uid, name, transfer_syntaxes | reason}]``; ``fingerprint``: a hash of
    the address and effective profile checked (a change of either asks again).
    """

    __tablename__ = "destination_preflight"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))                 # dimse | stowrs
    address: Mapped[str] = mapped_column(String(512), default="")
    profile: Mapped[str] = mapped_column(String(64), default="")
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    accepted: Mapped[list] = mapped_column(JSON, default=list)
    refused: Mapped[list] = mapped_column(JSON, default=list)
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    detail: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="system")
