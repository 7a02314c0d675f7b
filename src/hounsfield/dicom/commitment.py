"""Storage Commitment Push Model messages (PS3.4 Annex J), shared by our SCU (pacs) and SCP
(ingest): the N-ACTION Action Information and the N-EVENT-REPORT Event Information, built
strictly and read leniently (a bad message raises :class:`InvalidInput` saying what is wrong).

N-ACTION (J.3.2): Action Type ID 1 "Request Storage Commitment" on the well-known SOP instance
1.2.840.10008.1.20.1.1, with Transaction UID (0008,1195) and Referenced SOP Sequence
(0008,1199) of (Referenced SOP Class UID, Referenced SOP Instance UID).

N-EVENT-REPORT (J.3.3): Event Type ID 1 "Storage Commitment Request Successful" (every
instance committed: Referenced SOP Sequence) or 2 "... Complete - Failures Exist" (Failed SOP
Sequence (0008,1198) with a Failure Reason (0008,1197) per instance, Referenced SOP Sequence
for the committed ones, if any).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hounsfield.dicom.uids import is_lenient_uid
from hounsfield.errors import InvalidInput

#: Storage Commitment Push Model SOP Class and its well-known SOP instance (PS3.4 J.3.5)
PUSH_MODEL = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
ACTION_REQUEST = 1          # Action Type ID: Request Storage Commitment
EVENT_SUCCESS = 1           # Event Type ID: Storage Commitment Request Successful
EVENT_FAILURES = 2          # Event Type ID: Storage Commitment Request Complete - Failures Exist

# Failure Reason (0008,1197) values for Storage Commitment (PS3.3 C.14.1.1, PS3.4 J.3.3.1.1)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT = 0x0112
RESOURCE_LIMITATION = 0x0213
SOP_CLASS_NOT_SUPPORTED = 0x0122
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION = 0x0131

FAILURE_REASONS = {
    PROCESSING_FAILURE: "processing failure",
    NO_SUCH_OBJECT: "no such object instance",
    RESOURCE_LIMITATION: "resource limitation",
    SOP_CLASS_NOT_SUPPORTED: "referenced SOP class not supported",
    CLASS_INSTANCE_CONFLICT: "class / instance conflict",
    DUPLICATE_TRANSACTION: "duplicate transaction UID",
}
#: the pseudo status of a COMMIT delivery-log row when no report came in time
COMMIT_TIMEOUT = -5


def reason_text(code: int | None) -> str:
    if code is None:
        return "not in the report"
    if code == COMMIT_TIMEOUT:
        return "no report in time"
    return f"0x{code:04X} {FAILURE_REASONS.get(code, 'unknown failure reason')}"


@dataclass(frozen=True)
class Ref:
    """One referenced instance; ``reason`` is the Failure Reason of a failed one."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int | None = None


@dataclass
class Report:
    """A Storage Commitment result: what the SCP committed and what failed (with why)."""

    transaction_uid: str
    committed: list[Ref] = field(default_factory=list)
    failed: list[Ref] = field(default_factory=list)

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES if self.failed else EVENT_SUCCESS


def _refs(items: Iterable[Ref], *, failed: bool) -> Sequence:
    out = []
    for r in items:
        it = Dataset()
        it.ReferencedSOPClassUID = r.sop_class_uid
        it.ReferencedSOPInstanceUID = r.sop_instance_uid
        if failed:
            it.FailureReason = PROCESSING_FAILURE if r.reason is None else int(r.reason)
        out.append(it)
    return Sequence(out)


def action_information(transaction_uid: str, refs: Iterable[Ref]) -> Dataset:
    """The N-ACTION-RQ Action Information (PS3.4 Table J.3-1)."""
    refs = list(refs)
    if not refs:
        raise InvalidInput("a Storage Commitment request needs at least one instance")
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = _refs(refs, failed=False)
    return ds


def event_information(report: Report) -> Dataset:
    """The N-EVENT-REPORT-RQ Event Information (PS3.4 Tables J.3-2 and J.3-3)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.ReferencedSOPSequence = _refs(report.committed, failed=False)
    if report.failed:
        ds.FailedSOPSequence = _refs(report.failed, failed=True)
    return ds


def _uid(ds: Dataset, keyword: str, where: str) -> str:
    value = ds.get(keyword)
    if value in (None, ""):
        raise InvalidInput(f"{where} has no {keyword}")
    value = str(value).strip().rstrip("\0")
    if not is_lenient_uid(value):  # read leniently: leading zeros in components pass
        raise InvalidInput(f"{where}: {keyword} {value[:80]!r} is not a valid UID")
    return value


def _read_refs(ds: Dataset, keyword: str, *, failed: bool) -> list[Ref]:
    out = []
    for n, it in enumerate(ds.get(keyword) or [], 1):
        where = f"item {n} of {keyword}"
        reason = None
        if failed:
            raw = it.get("FailureReason")
            reason = int(raw) if raw not in (None, "") else PROCESSING_FAILURE
        out.append(Ref(_uid(it, "ReferencedSOPClassUID", where),
                       _uid(it, "ReferencedSOPInstanceUID", where), reason))
    return out


def parse_action(ds: Dataset | None) -> tuple[str, list[Ref]]:
    """(Transaction UID, referenced instances) of an N-ACTION's Action Information;
    :class:`InvalidInput` when either is missing or malformed."""
    if ds is None:
        raise InvalidInput("the N-ACTION has no Action Information")
    txn = _uid(ds, "TransactionUID", "the Action Information")
    if "ReferencedSOPSequence" not in ds or not ds.ReferencedSOPSequence:
        raise InvalidInput("empty or missing Referenced SOP Sequence (0008,1199): nothing to "
                           "commit")
    refs = _read_refs(ds, "ReferencedSOPSequence", failed=False)
    seen: set[str] = set()
    dups: set[str] = set()
    for r in refs:
        (dups if r.sop_instance_uid in seen else seen).add(r.sop_instance_uid)
    if dups:
        raise InvalidInput(f"the Referenced SOP Sequence names {len(dups)} instance(s) twice: "
                           f"{', '.join(sorted(dups)[:3])}")
    return txn, refs


def parse_report(ds: Dataset | None, event_type: int | None) -> Report:
    """A received N-EVENT-REPORT's result; :class:`InvalidInput` when it is malformed (no
    Transaction UID, an unknown Event Type ID, an item without UIDs)."""
    if event_type not in (EVENT_SUCCESS, EVENT_FAILURES):
        raise InvalidInput(f"Event Type ID {event_type} is not a Storage Commitment event "
                           "(1: successful, 2: failures exist)")
    if ds is None:
        raise InvalidInput("the N-EVENT-REPORT has no Event Information")
    rep = Report(_uid(ds, "TransactionUID", "the Event Information"),
                 _read_refs(ds, "ReferencedSOPSequence", failed=False),
                 _read_refs(ds, "FailedSOPSequence", failed=True))
    if event_type == EVENT_FAILURES and not rep.failed:
        raise InvalidInput("Event Type ID 2 (failures exist) without a Failed SOP Sequence")
    return rep
