"""Delivery report and durable delivery log for the SCU side (send, pull)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hounsfield.archive.archive import Archive
from hounsfield.dicom import status as st
from hounsfield.pacs.models import Delivery

#: pseudo statuses (negative: no DICOM status came back) — see pacs/export.py for how each
#: is classified; STOW-RS records HTTP failures as -<HTTP status> (pacs/stow.py)
NO_ASSOCIATION = -1        # no association / connection (refused, timed out, aborted)
REJECTED_TRANSIENT = -2    # A-ASSOCIATE-RJ, rejected-transient (PS3.8 9.3.4)
REJECTED_PERMANENT = -3    # A-ASSOCIATE-RJ, rejected-permanent
NOT_PREPARED = -4          # could not read or transcode the archived object: nothing sent


@dataclass
class Item:
    sop_instance_uid: str
    study_instance_uid: str
    status: int
    attempts: int = 1
    detail: str = ""
    #: export only (pacs.export): "delivered" | "retry" (transient failure) | "dead"
    outcome: str = ""

    @property
    def ok(self) -> bool:
        return st.is_success(self.status) or st.is_warning(self.status)


@dataclass
class DeliveryReport:
    operation: str
    destination: str
    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: export only: SOP instance UIDs not sent because the destination already acknowledged
    #: them (``skipped``) or because its output profile excludes their kind (``excluded``)
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    #: export only: what the destination's pre-flight found refused (hounsfield.pacs.preflight)
    warnings: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(1 for i in self.items if i.ok)

    @property
    def failed(self) -> list[Item]:
        return [i for i in self.items if not i.ok]

    @property
    def ok(self) -> bool:
        return bool(self.items) and not self.failed

    @property
    def retry(self) -> list[Item]:
        """Export: items that failed transiently (send them again after the back-off)."""
        return [i for i in self.items if i.outcome == "retry"]

    @property
    def dead(self) -> list[Item]:
        """Export: items refused permanently or out of attempts (an operator re-queues them)."""
        return [i for i in self.items if i.outcome == "dead"]

    def save(self, archive: Archive) -> None:
        """Append every item to the ``delivery`` table (one transaction)."""
        if not self.items:
            return
        with archive.write_session() as s, s.begin():
            s.add_all([Delivery(operation=self.operation, destination=self.destination[:256],
                                study_instance_uid=i.study_instance_uid[:64],
                                sop_instance_uid=i.sop_instance_uid[:64], status=i.status,
                                attempts=i.attempts, detail=i.detail) for i in self.items])
