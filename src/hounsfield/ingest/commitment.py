"""Storage Commitment Push Model on our DICOM node (PS3.4 Annex J).

As **SCP** (a peer asks us to commit what it sent): the N-ACTION "Request Storage Commitment"
is checked (Requested SOP Class / Instance, Action Type ID, Transaction UID, a non-empty
Referenced SOP Sequence, a calling AE title we can report to).  Every referenced instance is
looked up in the archive — present with the same SOP class: committed (an instance is in the
index only once it is fsynced, so it is safe); absent: Failure Reason 0x0112 "no such object
instance"; present with another SOP class: 0x0119 "class / instance conflict".  The request
and that result are written (``commitment_inbound``), then the N-ACTION is answered, and the
N-EVENT-REPORT goes back on the same association if the requester kept it open, otherwise on
a new association to the requester (its ``dicom.remotes`` entry, by AE title), proposing
SCP/SCU role selection with us as SCP.  A report not sent when the node stops is sent when it
starts again (:meth:`CommitmentService.resume`).  Every request and report is audited.

As **SCU's receiver** (we asked a PACS, :mod:`hounsfield.pacs.commitment`): an N-EVENT-REPORT
arriving on a new association is parsed and handed to the report sink the node was built with
(``pacs.commitment.record_report``; this package cannot import ``pacs``, which imports it).

A malformed request gets a failure status with an ErrorComment and nothing else; the
association and the server keep running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from sqlalchemy import select

from hounsfield import audit
from hounsfield.archive.archive import Archive
from hounsfield.archive.models import Instance, utcnow
from hounsfield.config import RemoteNode
from hounsfield.dicom import commitment as sc
from hounsfield.dicom import status as st
from hounsfield.errors import InvalidInput
from hounsfield.ingest.commitment_models import CommitmentInbound
from hounsfield.ingest.security import client_tls, nodelay

log = logging.getLogger(__name__)

#: (archive, report, calling_ae=, via=) -> (N-EVENT-REPORT-RSP status, ErrorComment)
ReportSink = Callable[..., tuple[int, str]]

# N-ACTION / N-EVENT-REPORT failure statuses (PS3.7 C.4, 10.1.4.1.10)
NO_SUCH_SOP_CLASS = 0x0118
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_ACTION = 0x0123
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_ARGUMENT_VALUE = 0x0115

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def check(archive: Archive, refs: list[sc.Ref]) -> sc.Report:
    """Which of ``refs`` the archive holds (committed) and which it does not (with the
    Failure Reason): the body of the report, without the Transaction UID."""
    found: dict[str, str] = {}
    uids = [r.sop_instance_uid for r in refs]
    with archive.session() as s:
        for i in range(0, len(uids), 500):
            found.update(s.execute(select(Instance.sop_instance_uid, Instance.sop_class_uid)
                                   .where(Instance.sop_instance_uid.in_(uids[i:i + 500]))).all())
    rep = sc.Report("")
    for r in refs:
        cls = found.get(r.sop_instance_uid)
        if cls is None:
            rep.failed.append(sc.Ref(r.sop_class_uid, r.sop_instance_uid, sc.NO_SUCH_OBJECT))
        elif cls != r.sop_class_uid:
            rep.failed.append(sc.Ref(r.sop_class_uid, r.sop_instance_uid,
                                     sc.CLASS_INSTANCE_CONFLICT))
        else:
            rep.committed.append(r)
    return rep


class CommitmentService:
    """The N-ACTION and N-EVENT-REPORT handlers of :class:`~hounsfield.ingest.scp.DicomNode`."""

    #: wait this long after answering an N-ACTION before choosing the association: a requester
    #: that releases right after the response (most do) gets its report on a new one
    same_association_grace_s = 0.5
    #: attempts (and the delay before each retry) to open the association for a report
    report_retry_delays_s = (1.0, 3.0, 9.0)

    def __init__(self, archive: Archive, *, report_sink: ReportSink | None = None) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.report_sink = report_sink
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    # -- SCP: a peer's N-ACTION ------------------------------------------------------------
    def on_n_action(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        peer = f"{calling}@{assoc.requestor.address}"
        code, why, txn, refs, remote = self._validate(event, calling)
        if code != st.SUCCESS:
            log.warning("Storage Commitment N-ACTION from %s refused (0x%04X): %s", peer, code,
                        why)
            self._audit(calling, peer, audit.Outcome.MAJOR_FAILURE,
                        f"N-ACTION refused (0x{code:04X}): {why}")
            return st.status_dataset(code, why), None
        rep = check(self.archive, refs)
        rep.transaction_uid = txn
        try:  # the promise to report is durable before it is made
            row_id = self._remember(rep, calling, peer)
        except Exception as exc:  # noqa: BLE001 - no promise then: a failure status
            log.error("cannot record the Storage Commitment request from %s: %s", peer, exc)
            return st.status_dataset(st.PROCESSING_FAILURE, f"cannot record the request: {exc}"), None
        self._audit(calling, peer, audit.Outcome.SUCCESS,
                    f"N-ACTION {txn}: {len(refs)} instance(s) to check, {len(rep.committed)} "
                    f"held, {len(rep.failed)} not")
        self._spawn(assoc, remote, rep, calling, peer, row_id)
        return st.status_dataset(st.SUCCESS), None

    def _spawn(self, assoc: Association | None, remote: RemoteNode, rep: sc.Report,
               calling: str, peer: str, row_id: int) -> None:
        t = threading.Thread(target=self._report, args=(assoc, remote, rep, calling, peer,
                                                        row_id),
                             name=f"commit-report-{rep.transaction_uid[-8:]}", daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _remember(self, rep: sc.Report, calling: str, peer: str) -> int:
        row = CommitmentInbound(
            transaction_uid=rep.transaction_uid, calling_ae=calling[:16], peer=peer[:128],
            report={"committed": [[r.sop_class_uid, r.sop_instance_uid] for r in rep.committed],
                    "failed": [[r.sop_class_uid, r.sop_instance_uid, r.reason]
                               for r in rep.failed]},
            n_committed=len(rep.committed), n_failed=len(rep.failed))
        with self.archive.write_session() as s, s.begin():
            s.add(row)
            s.flush()
            return row.id

    def _settle(self, row_id: int, state: str, via: str, attempts: int, detail: str) -> None:
        with self.archive.write_session() as s, s.begin():
            row = s.get(CommitmentInbound, row_id)
            if row is not None:
                row.state, row.via, row.detail = state, via, detail[:2000]
                row.attempts += attempts
                row.reported_at = utcnow() if state == "reported" else None

    def resume(self) -> int:
        """Send the reports a previous run promised and did not send (new associations);
        returns how many.  Called when the node starts."""
        with self.archive.session() as s:
            rows = s.scalars(select(CommitmentInbound)
                             .where(CommitmentInbound.state == "pending")).all()
        for row in rows:
            rep = sc.Report(row.transaction_uid,
                            [sc.Ref(c, i) for c, i in row.report.get("committed", [])],
                            [sc.Ref(c, i, r) for c, i, r in row.report.get("failed", [])])
            remote = next((r for r in self.settings.dicom.remotes.values()
                           if r.ae_title == row.calling_ae), None)
            if remote is None:
                self._settle(row.id, "undeliverable", "", 0, f"calling AE {row.calling_ae} "
                             "is no longer in dicom.remotes")
                continue
            log.info("Storage Commitment: sending the report for %s to %s (promised before "
                     "a restart)", row.transaction_uid, row.calling_ae)
            self._spawn(None, remote, rep, row.calling_ae, row.peer, row.id)
        return len(rows)

    def _validate(self, event: evt.Event, calling: str):  # noqa: ANN202
        req = event.request
        fail = (lambda code, why: (code, why, "", [], None))  # noqa: E731
        if str(req.RequestedSOPClassUID) != sc.PUSH_MODEL:
            return fail(NO_SUCH_SOP_CLASS, f"N-ACTION for SOP class {req.RequestedSOPClassUID}"
                                           ": only Storage Commitment Push Model is served")
        if str(req.RequestedSOPInstanceUID) != sc.WELL_KNOWN_INSTANCE:
            return fail(INVALID_OBJECT_INSTANCE, f"Requested SOP Instance UID must be the "
                        f"well-known {sc.WELL_KNOWN_INSTANCE}, got {req.RequestedSOPInstanceUID}")
        if req.ActionTypeID != sc.ACTION_REQUEST:
            return fail(NO_SUCH_ACTION, f"Action Type ID {req.ActionTypeID}: only 1 (Request "
                                        "Storage Commitment) exists")
        try:
            info = event.action_information
        except Exception as exc:  # noqa: BLE001 - undecodable Action Information
            return fail(INVALID_ARGUMENT_VALUE, f"cannot decode the Action Information: {exc}")
        try:
            txn, refs = sc.parse_action(info)
        except InvalidInput as exc:
            return fail(INVALID_ARGUMENT_VALUE, exc.reason)
        remote = next((r for r in self.settings.dicom.remotes.values()
                       if r.ae_title == calling), None)
        if remote is None:
            # PS3.4 J.3.3: the report may need a new association; we can open one only to a
            # node we know.  Refuse now rather than accept and never report.
            return fail(st.NOT_AUTHORIZED, f"calling AE {calling} is not in dicom.remotes: "
                                           "cannot send the commitment report to it")
        return st.SUCCESS, "", txn, refs, remote

    def _report(self, assoc: Association | None, remote: RemoteNode, rep: sc.Report,
                calling: str, peer: str, row_id: int) -> None:
        how, code, detail, tries = "", -1, "", 0
        try:
            info = sc.event_information(rep)
            if assoc is not None:
                time.sleep(self.same_association_grace_s)
                if assoc.is_established and assoc.is_alive():
                    code, detail = self._send_same(assoc, info, rep.event_type)
                    how, tries = "same", 1
            if code < 0:
                code, detail, n = self._send_new(remote, info, rep.event_type)
                how, tries = "new", tries + n
        except Exception as exc:  # noqa: BLE001 - a reporting thread never takes the node down
            log.exception("Storage Commitment report to %s failed", peer)
            code, detail = -1, repr(exc)
        ok = code == st.SUCCESS
        text = (f"N-EVENT-REPORT {rep.transaction_uid} ({how} association): "
                f"{len(rep.committed)} committed, {len(rep.failed)} failed"
                + ("" if ok else f"; not delivered: " + (
                    detail if code < 0 else f"{remote.ae_title} answered 0x{code:04X} {detail}")))
        (log.info if ok else log.warning)("Storage Commitment to %s: %s", peer, text)
        try:
            # a report the peer refused with a status was delivered: it will not take it again
            stopped = code < 0 and self._stopping.is_set()
            self._settle(row_id, "pending" if stopped else "reported" if code >= 0
                         else "undeliverable", how, tries, text)
            self._audit(calling, peer, audit.Outcome.SUCCESS if ok else
                        audit.Outcome.SERIOUS_FAILURE, text)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _send_same(self, assoc: Association, info: Dataset, event_type: int) -> tuple[int, str]:
        try:
            assoc.dimse_timeout = min(assoc.dimse_timeout or 30, 30)
            rsp, _reply = assoc.send_n_event_report(info, event_type, sc.PUSH_MODEL,
                                                    sc.WELL_KNOWN_INSTANCE)
        except Exception as exc:  # noqa: BLE001 - released under us: try a new association
            return -1, repr(exc)
        if rsp is None or "Status" not in rsp:
            return -1, "no response on the same association"
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))

    def _send_new(self, remote: RemoteNode, info: Dataset,
                  event_type: int) -> tuple[int, str, int]:
        """(status, ErrorComment, attempts) of the report on a new association; status -1
        when every attempt failed."""
        d = self.settings.dicom
        why = ""
        attempt = 0
        for attempt, delay in enumerate((0.0, *self.report_retry_delays_s)):
            if delay and self._stopping.wait(delay):
                return -1, f"node stopping; last error: {why}", attempt
            ae = AE(ae_title=d.ae_title)
            ae.acse_timeout = d.acse_timeout_s
            ae.dimse_timeout = d.dimse_timeout_s
            ae.network_timeout = d.network_timeout_s
            ae.add_requested_context(sc.PUSH_MODEL, SYNTAXES)
            role = build_role(sc.PUSH_MODEL, scu_role=False, scp_role=True)
            tls = client_tls(self.settings, remote.host) if remote.tls else None
            assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title,
                                 ext_neg=[role], tls_args=tls,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
            if not assoc.is_established:
                why = (f"association with {remote.ae_title}@{remote.host}:{remote.port} "
                       + ("rejected" if assoc.is_rejected else "failed"))
                log.info("%s (attempt %d)", why, attempt + 1)
                continue
            try:
                rsp, _reply = assoc.send_n_event_report(info, event_type, sc.PUSH_MODEL,
                                                        sc.WELL_KNOWN_INSTANCE)
            except Exception as exc:  # noqa: BLE001 - e.g. the context was refused
                why = f"{remote.ae_title} did not take the report: {exc}"
                continue
            finally:
                if assoc.is_established:
                    assoc.release()
            if rsp is None or "Status" not in rsp:
                why = f"no N-EVENT-REPORT response from {remote.ae_title}"
                continue
            return int(rsp.Status), str(rsp.get("ErrorComment", "")), attempt + 1
        return -1, why, attempt + 1

    # -- SCU side: a report for a request of ours, on a new association ----------------------
    def on_n_event_report(self, event: evt.Event) -> tuple[Dataset, None]:
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        req = event.request
        try:
            if str(req.AffectedSOPClassUID) != sc.PUSH_MODEL:
                return st.status_dataset(NO_SUCH_SOP_CLASS, f"N-EVENT-REPORT for SOP class "
                               f"{req.AffectedSOPClassUID} is not served here"), None
            if req.EventTypeID not in (sc.EVENT_SUCCESS, sc.EVENT_FAILURES):
                return st.status_dataset(NO_SUCH_EVENT_TYPE, f"Event Type ID {req.EventTypeID} is not a "
                               "Storage Commitment event (1 or 2)"), None
            report = sc.parse_report(event.event_information, req.EventTypeID)
        except InvalidInput as exc:
            log.warning("Storage Commitment report from %s refused: %s", calling, exc.reason)
            return st.status_dataset(INVALID_ARGUMENT_VALUE, exc.reason), None
        except Exception as exc:  # noqa: BLE001 - undecodable Event Information
            return st.status_dataset(st.PROCESSING_FAILURE, f"cannot decode the report: {exc}"), None
        if self.report_sink is None:
            return st.status_dataset(st.PROCESSING_FAILURE, "this node makes no Storage Commitment "
                           "requests (no report handler)"), None
        try:
            code, comment = self.report_sink(self.archive, report, calling_ae=calling, via="new")
        except Exception as exc:  # noqa: BLE001 - the database failing is a status too
            log.exception("recording the Storage Commitment report from %s failed", calling)
            return st.status_dataset(st.PROCESSING_FAILURE, f"cannot record the report: {exc}"), None
        return st.status_dataset(code, comment), None

    def _audit(self, calling: str, peer: str, outcome: audit.Outcome, detail: str) -> None:
        try:
            audit.record(self.archive, audit.Entry(
                action=audit.Action.STORAGE_COMMITMENT, actor=calling or "?",
                role="DICOM peer (SCU)", source=peer, destination=self.settings.dicom.ae_title,
                outcome=outcome, detail=detail[:1000]))
        except Exception as exc:  # noqa: BLE001 - the log must not take the node down
            log.error("cannot write the Storage Commitment audit event: %s", exc)


def _nodelay(event: evt.Event) -> None:
    nodelay(getattr(event.assoc.dul.socket, "socket", None))


