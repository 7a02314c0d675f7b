"""Tables of the pseudonym vault and the re-identification audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hounsfield.archive.models import Base, utcnow

TS = DateTime(timezone=True)


class Pseudonym(Base):
    """One pseudonym and its original, encrypted at rest (Fernet token of a JSON object).

    ``kind`` is ``patient`` (original PatientID / IssuerOfPatientID / PatientName / birth date)
    or ``study`` / ``series`` (original UID) — the de-identification link in the lineage.
    """

    __tablename__ = "deid_pseudonym"
    __table_args__ = (UniqueConstraint("kind", "pseudonym"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    pseudonym: Mapped[str] = mapped_column(String(128), index=True)
    patient_pseudonym: Mapped[str] = mapped_column(String(64), default="", index=True)
    original_encrypted: Mapped[str] = mapped_column(Text)
    profile: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Reidentification(Base):
    """Every re-identification attempt, granted or not (who, what, when, from where, outcome)."""

    __tablename__ = "deid_reidentification"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    roles: Mapped[str] = mapped_column(String(256), default="")
    client: Mapped[str] = mapped_column(String(256), default="")
    kind: Mapped[str] = mapped_column(String(16))
    pseudonym: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))  # granted | denied | not-found
    reason: Mapped[str] = mapped_column(String(512), default="")
