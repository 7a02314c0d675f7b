"""Storage Commitment SCU (PS3.4 Annex J, Push Model): after an export, ask the destination to
commit to keep what it acknowledged, and record what it says.

:func:`request` sends one N-ACTION "Request Storage Commitment" (a new Transaction UID, the
Referenced SOP Sequence of the delivered, not yet committed objects) after writing the request
and its instances durably (``commitment_request`` / ``commitment_instance``), so a report that
arrives at once — on the same association or on a new one the PACS opens to our DICOM node —
always finds them.  The association stays open ``commitment_hold_s`` for a report on it; after
that the PACS reports on a new association (our :class:`~hounsfield.ingest.scp.DicomNode` hands
it to :func:`record_report`).

:func:`record_report` applies an N-EVENT-REPORT: per instance committed or failed (with the
Failure Reason), one ``COMMIT`` delivery-log row each (0x0000 or the reason), the request's
state.  :func:`expire` ends a request no report answered within ``commitment_timeout_s``: its
instances get a ``COMMIT`` row with status -5.  Either way an instance that is not committed is
not acknowledged (:func:`hounsfield.pacs.export.acknowledged`): the next export attempt sends
it again and asks again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_context
from sqlalchemy import select

from hounsfield import audit
from hounsfield.archive.archive import Archive
from hounsfield.archive.models import utcnow
from hounsfield.config import DimseDestination
from hounsfield.dicom import commitment as sc
from hounsfield.dicom import status as st
from hounsfield.errors import InvalidInput, PeerError
from hounsfield.pacs import export, scu
from hounsfield.pacs.delivery import NO_ASSOCIATION, REJECTED_PERMANENT, REJECTED_TRANSIENT
from hounsfield.pacs.destinations import label
from hounsfield.pacs.models import FINAL_STATES, CommitmentInstance, CommitmentRequest, Delivery
from hounsfield.pacs.profiles import effective

log = logging.getLogger(__name__)

__all__ = ["Requested", "expire", "record_report", "request", "status"]


@dataclass
class Requested:
    """What :func:`request` did.  ``outcome``: ``sent`` (N-ACTION accepted: wait for the
    report), ``done`` (nothing left to commit: every delivered object is committed),
    ``retry`` (a transient failure: no association, processing failure) or ``dead`` (a
    permanent refusal: the destination does not support Storage Commitment)."""

    outcome: str
    transaction_uid: str = ""
    instances: int = 0
    already: int = 0
    detail: str = ""
    state: str = ""            # the request's state when request() returned


def _wanted(archive: Archive, uids: list[str], destination: str) -> list[tuple[str, str, str]]:
    """(SOP instance, SOP class, study) of the objects the destination's profile sends."""
    kinds = set(effective(archive.settings, destination).kinds)
    return [(r[0], r[1], r[4]) for r in export._rows(archive, uids)
            if export.kind_of(r[1]) in kinds]


def request(archive: Archive, destination: str, sop_uids: list[str], *, job_id: str = "",
            attempt: int = 1) -> Requested:
    """Ask ``destination`` to commit the objects among ``sop_uids`` it stored and has not
    committed yet (N-ACTION).  Never raises for a peer's failure: it is the outcome."""
    settings = archive.settings
    dest = export.destination(settings, destination)
    if not isinstance(dest, DimseDestination):
        raise InvalidInput(f"{destination} is a STOW-RS destination: Storage Commitment is a "
                           "DIMSE service (PS3.4 Annex J)")
    node = export.node_of(settings, dest)
    wanted = _wanted(archive, list(dict.fromkeys(sop_uids)), destination)
    have = export.stored(archive, [w[0] for w in wanted], destination)
    done = export.committed(archive, have, destination)
    todo = [w for w in wanted if w[0] in have and w[0] not in done]
    if not todo:
        return Requested("done", already=len(done),
                         detail=f"all {len(done)} delivered object(s) already committed")
    txn = generate_uid()
    with archive.write_session() as s, s.begin():
        s.add(CommitmentRequest(transaction_uid=txn, destination=destination[:256],
                                remote_ae=node.ae_title[:16], job_id=job_id[:64],
                                attempt=attempt, state="pending", n_instances=len(todo)))
        s.add_all([CommitmentInstance(transaction_uid=txn, sop_instance_uid=sop,
                                      sop_class_uid=cls, study_instance_uid=study)
                   for sop, cls, study in todo])
    out = _send_action(archive, dest, node, txn, todo)
    out.already = len(done)
    _audit(archive, destination, todo, out)
    return out


def _send_action(archive: Archive, dest: DimseDestination, node, txn: str,  # noqa: ANN001
                 todo: list[tuple[str, str, str]]) -> Requested:
    settings = archive.settings
    reported = threading.Event()

    def on_report(event: evt.Event) -> tuple[Dataset, None]:
        code, comment = _on_same_association(archive, event)
        if code == st.SUCCESS:
            reported.set()
        return st.status_dataset(code, comment), None

    context = build_context(sc.PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = scu.associate(settings, node, [context], retries=0,
                              handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    except PeerError as exc:
        why = exc.detail if isinstance(exc.detail, dict) else {}
        code = {1: REJECTED_PERMANENT, 2: REJECTED_TRANSIENT}.get(why.get("rejected"),
                                                                 NO_ASSOCIATION)
        if "no_contexts" in why:
            return _refused(archive, txn, st.SOP_CLASS_NOT_SUPPORTED,
                            f"{label(node)} does not accept the Storage Commitment Push Model "
                            "(turn storage_commitment off for this destination)")
        return _refused(archive, txn, code, exc.reason)
    try:
        info = sc.action_information(txn, [sc.Ref(cls, sop) for sop, cls, _s in todo])
        rsp, _reply = assoc.send_n_action(info, sc.ACTION_REQUEST, sc.PUSH_MODEL,
                                          sc.WELL_KNOWN_INSTANCE)
        code = int(rsp.Status) if rsp is not None and "Status" in rsp else NO_ASSOCIATION
        if code != st.SUCCESS and not st.is_warning(code):
            comment = str(rsp.get("ErrorComment", "")) if rsp is not None else ""
            return _refused(archive, txn, code, (
                f"{label(node)} refused the commitment request: {st.name(code)}"
                + (f" ({comment})" if comment else "")) if code >= 0 else
                f"no N-ACTION response from {label(node)} (association aborted or DIMSE "
                "timeout)")
        # hold the association for a report on it; stop early once one came by any path
        deadline = time.monotonic() + dest.commitment_hold_s
        while not reported.wait(min(0.1, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline or status(archive, txn)["final"]:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    state = status(archive, txn)["state"]
    via = (", reported on the same association" if reported.is_set() else
           ", reported on a new association" if state != "pending" else "")
    return Requested("sent", txn, len(todo), state=state,
                     detail=f"N-ACTION {txn} accepted by {label(node)} for {len(todo)} "
                            f"object(s){via}")


def _refused(archive: Archive, txn: str, code: int, why: str) -> Requested:
    with archive.write_session() as s, s.begin():
        req = s.scalars(select(CommitmentRequest)
                        .where(CommitmentRequest.transaction_uid == txn)).one()
        req.state, req.detail, req.reported_at = "refused", why[:2000], utcnow()
    outcome = export.classify(code)
    return Requested("retry" if outcome in ("retry", "delivered") else "dead", txn,
                     detail=why, state="refused")


def _on_same_association(archive: Archive, event: evt.Event) -> tuple[int, str]:
    req = event.request
    calling = event.assoc.acceptor.ae_title.strip()
    try:
        if str(req.AffectedSOPClassUID) != sc.PUSH_MODEL:
            return 0x0118, f"N-EVENT-REPORT for SOP class {req.AffectedSOPClassUID}: only " \
                           "the Storage Commitment Push Model is expected here"
        report = sc.parse_report(event.event_information, req.EventTypeID)
    except InvalidInput as exc:
        return 0x0115, exc.reason
    except Exception as exc:  # noqa: BLE001 - an undecodable report is a status, not a crash
        return st.PROCESSING_FAILURE, f"cannot read the Event Information: {exc}"
    return record_report(archive, report, calling_ae=calling, via="same")


# -- results ---------------------------------------------------------------------------------
def record_report(archive: Archive, report: sc.Report, *, calling_ae: str = "",
                  via: str = "new") -> tuple[int, str]:
    """Apply a received N-EVENT-REPORT (on the same association, or on a new one our DICOM
    node accepted).  Returns the N-EVENT-REPORT-RSP status and ErrorComment: 0x0000, or
    0x0110 (processing failure) for a Transaction UID we never sent, with the reason."""
    txn = report.transaction_uid
    committed = {r.sop_instance_uid: r for r in report.committed}
    failed = {r.sop_instance_uid: r for r in report.failed}
    with archive.write_session() as s, s.begin():
        req = s.scalars(select(CommitmentRequest)
                        .where(CommitmentRequest.transaction_uid == txn)).first()
        if req is None:
            log.warning("Storage Commitment report from %s for unknown transaction %s",
                        calling_ae, txn)
            return st.PROCESSING_FAILURE, (f"unknown Transaction UID {txn}: no Storage "
                                           f"Commitment request of ours has it")
        late = req.state in FINAL_STATES
        rows = s.scalars(select(CommitmentInstance)
                         .where(CommitmentInstance.transaction_uid == txn)).all()
        now = utcnow()
        log_rows = []
        ok = bad = 0
        for inst in rows:
            sop = inst.sop_instance_uid
            if sop in committed:
                inst.state, inst.failure_reason = "committed", None
                code, detail = st.SUCCESS, f"committed ({txn})"
                ok += 1
            else:
                reason = failed[sop].reason if sop in failed else None
                inst.state, inst.failure_reason = "failed", reason
                code = sc.PROCESSING_FAILURE if reason is None else reason
                detail = f"not committed: {sc.reason_text(reason)} ({txn})"
                bad += 1
            inst.at = now
            log_rows.append(Delivery(operation=export.COMMIT_OPERATION,
                                     destination=req.destination, sop_instance_uid=sop,
                                     study_instance_uid=inst.study_instance_uid, status=code,
                                     attempts=req.attempt, detail=detail))
        s.add_all(log_rows)
        extra = sorted((set(committed) | set(failed)) - {r.sop_instance_uid for r in rows})
        req.n_committed, req.n_failed = ok, bad
        req.state = "committed" if not bad else "failed" if not ok else "partial"
        req.reported_at, req.report_via = now, via
        notes = [f"{ok} committed, {bad} not committed"]
        reasons = sorted({sc.reason_text(r.failure_reason) for r in rows
                          if r.state == "failed"})
        if reasons:
            notes.append("failures: " + ", ".join(reasons))
        if extra:
            notes.append(f"the report also names {len(extra)} instance(s) not in the request")
        if calling_ae and req.remote_ae and calling_ae != req.remote_ae:
            notes.append(f"reported by {calling_ae}, requested of {req.remote_ae}")
        if late:
            notes.append("report arrived after the request had ended (recorded anyway)")
        req.detail = "; ".join(notes)[:2000]
        destination, detail, state = req.destination, req.detail, req.state
    audit.record(archive, audit.Entry(
        action=audit.Action.STORAGE_COMMITMENT, actor=calling_ae or "?", role="SCP (PACS)",
        destination=destination,
        outcome=audit.Outcome.SUCCESS if state == "committed" else audit.Outcome.MINOR_FAILURE
        if state == "partial" else audit.Outcome.MAJOR_FAILURE,
        detail=f"N-EVENT-REPORT ({via} association) for {txn}: {detail}"))
    log.info("Storage Commitment %s at %s: %s", txn, destination, detail)
    return st.SUCCESS, ""


def expire(archive: Archive, transaction_uid: str) -> dict:
    """End a pending request for good (no report in time): every pending instance becomes
    ``timeout`` with a ``COMMIT`` delivery-log row of status -5.  A report that still comes
    later is recorded (:func:`record_report`).  Returns :func:`status`."""
    with archive.write_session() as s, s.begin():
        req = s.scalars(select(CommitmentRequest)
                        .where(CommitmentRequest.transaction_uid == transaction_uid)).one()
        if req.state == "pending":
            rows = s.scalars(select(CommitmentInstance).where(
                CommitmentInstance.transaction_uid == transaction_uid,
                CommitmentInstance.state == "pending")).all()
            now = utcnow()
            for inst in rows:
                inst.state, inst.at = "timeout", now
            s.add_all([Delivery(operation=export.COMMIT_OPERATION, destination=req.destination,
                                sop_instance_uid=i.sop_instance_uid,
                                study_instance_uid=i.study_instance_uid,
                                status=sc.COMMIT_TIMEOUT, attempts=req.attempt,
                                detail=f"not committed: no N-EVENT-REPORT in time "
                                       f"({transaction_uid})") for i in rows])
            req.state, req.n_failed = "timeout", len(rows)
            req.detail = (f"no N-EVENT-REPORT from {req.remote_ae} within "
                          f"{_timeout(archive, req.destination):g} s: {len(rows)} object(s) "
                          "not committed")
    return status(archive, transaction_uid)


def _timeout(archive: Archive, destination: str) -> float:
    try:
        return export.destination(archive.settings, destination).commitment_timeout_s
    except InvalidInput:
        return 0.0


@dataclass
class _Status:
    state: str
    age_s: float
    committed: int
    failed: list[dict] = field(default_factory=list)
    detail: str = ""


def status(archive: Archive, transaction_uid: str) -> dict:
    """A request's state, its age in seconds, how many instances were committed and which
    failed (SOP instance UID and reason), as a plain dict (a workflow step's result)."""
    with archive.session() as s:
        req = s.scalars(select(CommitmentRequest)
                        .where(CommitmentRequest.transaction_uid == transaction_uid)).first()
        if req is None:
            raise InvalidInput(f"no Storage Commitment request {transaction_uid}")
        rows = s.scalars(select(CommitmentInstance)
                         .where(CommitmentInstance.transaction_uid == transaction_uid)).all()
        requested = req.requested_at
        if requested.tzinfo is None:
            from datetime import timezone

            requested = requested.replace(tzinfo=timezone.utc)
        out = _Status(req.state, max(0.0, (utcnow() - requested).total_seconds()),
                      sum(1 for r in rows if r.state == "committed"),
                      [{"sop_instance_uid": r.sop_instance_uid,
                        "reason": sc.reason_text(sc.COMMIT_TIMEOUT if r.state == "timeout"
                                                 else r.failure_reason)}
                       for r in rows if r.state in ("failed", "timeout")], req.detail)
    return {"state": out.state, "final": out.state in FINAL_STATES,
            "age_s": round(out.age_s, 3), "committed": out.committed, "failed": out.failed,
            "detail": out.detail, "transaction_uid": transaction_uid}


def _audit(archive: Archive, destination: str, todo: list[tuple[str, str, str]],
           out: Requested) -> None:
    ok = out.outcome == "sent"
    studies = sorted({t[2] for t in todo})
    audit.record_many(archive, [audit.Entry(
        action=audit.Action.STORAGE_COMMITMENT, actor=archive.settings.dicom.ae_title,
        role="SCU", destination=destination, study_instance_uid=study,
        outcome=audit.Outcome.SUCCESS if ok else audit.Outcome.MAJOR_FAILURE,
        detail=f"N-ACTION {out.transaction_uid}: {out.detail}"[:1000]) for study in studies])
