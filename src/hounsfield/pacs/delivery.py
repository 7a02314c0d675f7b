"""Delivery report and durable delivery log for the SCU side (send, pull)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hounsfield.archive.archive import Archive
from hounsfield.dicom import status as st
from hounsfield.pacs.models import Delivery

NO_ASSOCIATION = -1


@dataclass
class Item:
    sop_instance_uid: str
    study_instance_uid: str
    status: int
    attempts: int = 1
    detail: str = ""

    @property
    def ok(self) -> bool:
        return st.is_success(self.status) or st.is_warning(self.status)


@dataclass
class DeliveryReport:
    operation: str
    destination: str
    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(1 for i in self.items if i.ok)

    @property
    def failed(self) -> list[Item]:
        return [i for i in self.items if not i.ok]

    @property
    def ok(self) -> bool:
        return bool(self.items) and not self.failed

    def save(self, archive: Archive) -> None:
        """Append every item to the ``delivery`` table (one transaction)."""
        if not self.items:
            return
        with archive.write_session() as s, s.begin():
            s.add_all([Delivery(operation=self.operation, destination=self.destination[:256],
                                study_instance_uid=i.study_instance_uid[:64],
                                sop_instance_uid=i.sop_instance_uid[:64], status=i.status,
                                attempts=i.attempts, detail=i.detail) for i in self.items])
