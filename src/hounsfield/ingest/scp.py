"""The DICOM node: Verification, Storage, Query/Retrieve and MPPS SCP (PS3.4 Annexes A, B, C, F).

Callbacks stay thin.  C-STORE: take the received bytes as they are
(``event.encoded_dataset()``, no re-encoding, pixels never decoded), parse the header, check it
against the request, hand it to the :class:`~hounsfield.ingest.committer.GroupCommitter` and
answer Success only once the instance is fsynced and committed.  Every failure becomes the
PS3.4 Annex B status with an ErrorComment, and the association and the server keep running.

Audit: one PS3.15 A.5 event per (association, study, action) — written when the association
closes — rather than one transaction per instance.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from hounsfield import audit
from hounsfield.archive.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.dicom import commitment as sc
from hounsfield.dicom import status as st
from hounsfield.dicom.transfer import (
    STORABLE,
    STORAGE_SOP_CLASSES,
    UNCOMPRESSED,
    fit_to_contexts,
    propose_for,
)
from hounsfield.errors import ConfigurationError, DatasetMismatch, HounsfieldError
from hounsfield.ingest import lean, mpps, qr, reactor
from hounsfield.ingest.commitment import CommitmentService, ReportSink
from hounsfield.ingest.committer import GroupCommitter
from hounsfield.ingest.security import admit, nodelay, server_tls

log = logging.getLogger(__name__)
_HASHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sha256")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

_FIND = {str(PatientRootQueryRetrieveInformationModelFind): qr.PATIENT_ROOT,
         str(StudyRootQueryRetrieveInformationModelFind): qr.STUDY_ROOT}
_RETRIEVE = {str(PatientRootQueryRetrieveInformationModelMove): qr.PATIENT_ROOT,
             str(StudyRootQueryRetrieveInformationModelMove): qr.STUDY_ROOT,
             str(PatientRootQueryRetrieveInformationModelGet): qr.PATIENT_ROOT,
             str(StudyRootQueryRetrieveInformationModelGet): qr.STUDY_ROOT}


@dataclass
class _StudyTally:
    patient_id: str = ""
    ok: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass
class _AssocLog:
    """Per-association audit tally: (action, study) -> counts."""

    actor: str
    source: str
    tallies: dict[tuple[audit.Action, str, str], _StudyTally] = field(default_factory=dict)

    def add(self, action: audit.Action, study: str, patient: str, ok: bool, reason: str = "",
            destination: str = "") -> None:
        t = self.tallies.setdefault((action, study, destination), _StudyTally(patient))
        if ok:
            t.ok += 1
        else:
            t.failed += 1
            if reason and len(t.reasons) < 5:
                t.reasons.append(reason)

    def entries(self) -> list[audit.Entry]:
        out = []
        for (action, study, dest), t in self.tallies.items():
            outcome = (audit.Outcome.SUCCESS if not t.failed else
                       audit.Outcome.MAJOR_FAILURE if not t.ok else audit.Outcome.MINOR_FAILURE)
            detail = f"{t.ok} ok, {t.failed} failed"
            if t.reasons:
                detail += ": " + "; ".join(t.reasons)
            out.append(audit.Entry(action=action, actor=self.actor, role="DICOM peer",
                                   source=self.source, destination=dest,
                                   study_instance_uid=study, patient_id=t.patient_id,
                                   outcome=outcome, detail=detail))
        return out


class DicomNode:
    """Verification + Storage + Query/Retrieve + MPPS SCP on ``settings.dicom`` (host, port,
    AE title).

    ``start()`` / ``stop()``; ``port`` is the bound port (useful with port 0).
    """

    name = "dicom"

    def __init__(self, archive: Archive, *, committer: GroupCommitter | None = None,
                 commitment_reports: ReportSink | None = None) -> None:
        """``commitment_reports``: where Storage Commitment reports for our own requests go
        (``hounsfield.pacs.commitment.record_report``); see :mod:`hounsfield.ingest.commitment`."""
        self.archive = archive
        self.settings = archive.settings
        self.committer = committer or GroupCommitter(
            archive, max_batch=archive.settings.dicom.group_commit_max)
        self._own_committer = committer is None
        self._server = None
        self._logs: dict[int, _AssocLog] = {}
        self._lock = threading.Lock()
        self._lean_sockets: set[socket.socket] = set()
        self.lean_associations = 0  # connections served on the lean path (for tests, stats)
        self._lean_syntaxes = ({str(s) for s in STORAGE_SOP_CLASSES} | {str(Verification)}
                               | set(_FIND))
        self.commitment = CommitmentService(archive, report_sink=commitment_reports)
        self.ae = self._make_ae()

    # -- lifecycle -------------------------------------------------------------------------
    def _make_ae(self) -> AE:
        d = self.settings.dicom
        ae = AE(ae_title=d.ae_title)
        ae.maximum_associations = d.max_associations
        ae.acse_timeout = d.acse_timeout_s
        ae.dimse_timeout = d.dimse_timeout_s
        ae.network_timeout = d.network_timeout_s
        ae.maximum_pdu_size = d.max_pdu
        syntaxes = list(STORABLE)
        plain = list(UNCOMPRESSED) + [DeflatedExplicitVRLittleEndian]
        ae.add_supported_context(Verification, plain)
        for sop in STORAGE_SOP_CLASSES:
            # scp_role: C-GET requestors take the Storage SCP role on our association
            ae.add_supported_context(sop, syntaxes, scu_role=True, scp_role=True)
        for sop in (*_FIND, *_RETRIEVE):
            ae.add_supported_context(sop, plain)
        # never on the lean path (not in _lean_syntaxes): associations proposing it go to
        # pynetdicom, storage contexts included
        ae.add_supported_context(mpps.MPPS_SOP_CLASS, plain)
        # Storage Commitment Push Model: as SCP, and as SCU receiving reports on a new
        # association (the PACS proposes role selection with itself as SCP)
        ae.add_supported_context(sc.PUSH_MODEL, plain, scu_role=True, scp_role=True)
        return ae

    def start(self) -> None:
        if self._own_committer:
            self.committer.start()
        d = self.settings.dicom
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
            (evt.EVT_N_ACTION, self.commitment.on_n_action),
            (evt.EVT_N_EVENT_REPORT, self.commitment.on_n_event_report),
        ]
        try:
            self._server = self.ae.make_server(
                (d.host, d.port), evt_handlers=handlers, ssl_context=server_tls(self.settings),
                contexts=_SharedContexts(self.ae.supported_contexts),
                server_class=_ReusePortServer if d.reuse_port else _Server,
                request_handler=_Dispatch)
            self._server.hf_node = self
        except OSError as exc:
            if self._own_committer:
                self.committer.stop()
            raise ConfigurationError(f"cannot listen for DICOM on {d.host}:{d.port}: "
                                     f"{exc.strerror or exc}") from exc
        threading.Thread(target=self._server.serve_forever, name="dicom-acceptor",
                         daemon=True).start()
        self.commitment.resume()
        log.info("DICOM node %s listening on %s:%d%s", d.ae_title, d.host, self.port,
                 " (TLS)" if d.tls_cert else "")

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.settings.dicom.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for a in list(self.ae.active_associations):
            a.abort()
        with self._lock:
            lean_socks = list(self._lean_sockets)
        for sock in lean_socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.commitment.stop()
        self._flush_all()
        if self._own_committer:
            self.committer.stop()

    # -- association events ---------------------------------------------------------------
    @staticmethod
    def _peer(assoc: Association) -> str:
        return f"{assoc.requestor.ae_title}@{assoc.requestor.address}"

    def _on_conn_open(self, event: evt.Event) -> None:
        nodelay(getattr(event.assoc.dul.socket, "socket", None))

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        ok, why = admit(self.settings, rq.calling_ae_title, rq.called_ae_title,
                        assoc.requestor.address)
        if ok:
            return
        diag = 0x07 if "called AE" in why else 0x03
        log.warning("association from %s@%s rejected: %s", rq.calling_ae_title.strip(),
                    assoc.requestor.address, why)
        audit.record(self.archive, audit.Entry(
            action=audit.Action.LOGIN, actor=rq.calling_ae_title.strip() or "?",
            role="DICOM peer", source=assoc.requestor.address,
            outcome=audit.Outcome.SERIOUS_FAILURE, detail=f"association rejected: {why}"))
        assoc.acse.send_reject(0x01, 0x01, diag)
        assoc.is_rejected = True
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _log(self, assoc: Association) -> _AssocLog:
        with self._lock:
            lg = self._logs.get(id(assoc))
            if lg is None:
                lg = self._logs[id(assoc)] = _AssocLog(assoc.requestor.ae_title.strip(),
                                                      self._peer(assoc))
            return lg

    def _on_conn_close(self, event: evt.Event) -> None:
        with self._lock:
            lg = self._logs.pop(id(event.assoc), None)
        self._flush(lg)

    def _flush(self, lg: _AssocLog | None) -> None:
        if lg is None or not lg.tallies:
            return
        try:
            audit.record_many(self.archive, lg.entries())
        except Exception as exc:  # noqa: BLE001 - the log must not take the node down
            log.error("cannot write audit events for %s: %s", lg.source, exc)

    def _flush_all(self) -> None:
        with self._lock:
            logs, self._logs = list(self._logs.values()), {}
        for lg in logs:
            self._flush(lg)

    # -- C-ECHO (PS3.4 A) -------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return st.SUCCESS

    # -- C-STORE (PS3.4 B) ------------------------------------------------------------------
    def _on_store(self, event: evt.Event) -> Dataset:
        req = event.request
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - an undecodable request is a status too
            code, comment = st.store_status(exc)
            return st.status_dataset(code, comment)
        code, comment = self._store_part10(data, str(req.AffectedSOPClassUID or ""),
                                           str(req.AffectedSOPInstanceUID or ""),
                                           self._peer(event.assoc), self._log(event.assoc))
        return st.status_dataset(code, comment)

    def _store_part10(self, data: bytes, sop_class: str, sop: str, peer: str,
                      lg: _AssocLog, sha256: str | None = None) -> tuple[int, str]:
        """Check and durably store one C-STORE data set (Part 10 bytes, and their SHA-256 when
        the caller hashed them already); the response status and ErrorComment (PS3.4 B.2.3).
        Never raises."""
        study, patient = "", ""
        try:
            if sha256 is None:  # on another core while this thread parses
                digest = _HASHER.submit(_sha256, data).result
            else:
                digest = lambda: sha256  # noqa: E731 - the caller hashed it already
            parsed = parse_part10(data, name=f"C-STORE {sop}", sha256=digest,
                                  defer_json=True)
            study, patient = parsed.study_instance_uid, parsed.patient["patient_id"]
            if parsed.sop_instance_uid != sop:
                raise DatasetMismatch(f"SOPInstanceUID in data set ({parsed.sop_instance_uid}) "
                                      f"differs from the request's ({sop})")
            if parsed.instance["sop_class_uid"] != sop_class:
                raise DatasetMismatch(f"SOPClassUID in data set "
                                      f"({parsed.instance['sop_class_uid']}) differs from the "
                                      f"request's ({sop_class})")
            outcome = self.committer.store(parsed, peer)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            code, comment = st.store_status(exc)
            reason = exc.reason if isinstance(exc, HounsfieldError) else repr(exc)
            log.warning("C-STORE %s from %s refused (0x%04X): %s", sop, peer, code, reason)
            lg.add(audit.Action.C_STORE, study, patient, False, reason)
            return code, comment
        lg.add(audit.Action.C_STORE, study, patient, outcome.status != "conflict",
               outcome.reason)
        if outcome.status == "conflict":
            log.warning("C-STORE %s from %s: %s", sop, peer, outcome.reason)
            return st.DUPLICATE_SOP_INSTANCE, st.error_comment(outcome.reason)
        return st.SUCCESS, ""

    # -- the lean path for associations that only send (see hounsfield.ingest.lean) ---------
    def try_lean(self, sock: socket.socket, address: tuple) -> bool:
        """Serve this connection on the lean storage path if its A-ASSOCIATE-RQ allows it;
        ``False`` (nothing consumed) hands it to pynetdicom."""
        d = self.settings.dicom
        if not d.lean_storage or isinstance(sock, ssl.SSLSocket):
            return False
        nodelay(sock)
        timeout = sock.gettimeout()
        rq = lean.peek_request(sock, d.acse_timeout_s)
        if (rq is None or rq.has_role_selection
                or not rq.abstract_syntaxes <= self._lean_syntaxes):
            sock.settimeout(timeout)
            return False
        with self._lock:
            self._lean_sockets.add(sock)
            self.lean_associations += 1
        try:
            self._serve_lean(sock, rq, address[0])
        except Exception as exc:  # noqa: BLE001 - one broken association never stops the node
            log.error("association from %s failed: %r", address[0], exc)
        finally:
            with self._lock:
                self._lean_sockets.discard(sock)
            try:
                sock.close()
            except OSError:
                pass
        return True

    def _serve_lean(self, sock: socket.socket, rq: lean.Request, host: str) -> None:
        d = self.settings.dicom
        prim = rq.primitive
        calling = str(prim.calling_ae_title).strip()
        lg = _AssocLog(calling, f"{calling}@{host}")
        sa = lean.StorageAssociation(
            sock, implementation_uid=str(self.ae.implementation_class_uid),
            implementation_version=self.ae.implementation_version_name or "",
            max_pdu=d.max_pdu, network_timeout=d.network_timeout_s,
            store=lambda data, sop_class, sop, sha256: self._store_part10(
                data, sop_class, sop, lg.source, lg, sha256),
            find=lambda identifier, sop_class, cancelled: self.find_responses(
                identifier, sop_class, lg, cancelled))
        ok, why = admit(self.settings, calling, str(prim.called_ae_title), host)
        if not ok:
            log.warning("association from %s@%s rejected: %s", calling, host, why)
            audit.record(self.archive, audit.Entry(
                action=audit.Action.LOGIN, actor=calling or "?", role="DICOM peer", source=host,
                outcome=audit.Outcome.SERIOUS_FAILURE, detail=f"association rejected: {why}"))
            sa.reject(rq, 0x01, 0x01, 0x07 if "called AE" in why else 0x03)
            return
        with self._lock:
            active = len(self._lean_sockets)
        active += sum(1 for a in self.ae.active_associations if a.is_acceptor)
        if active > d.max_associations:
            log.warning("association from %s@%s rejected: %d associations already active",
                        calling, host, active - 1)
            sa.reject(rq, 0x02, 0x03, 0x02)  # transient, local limit exceeded (PS3.8 9.3.4)
            return
        acc = sa.accept(rq, self.ae.supported_contexts)
        if acc is None:
            return
        try:
            how = sa.serve(acc)
            log.info("association from %s %s after %d instances stored", lg.source, how,
                     sa.stored)
        finally:
            self._flush(lg)

    # -- C-FIND (PS3.4 C.4.1) ---------------------------------------------------------------
    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        for code, comment, ds in self.find_responses(
                lambda: event.identifier, str(event.request.AffectedSOPClassUID),
                self._log(event.assoc), lambda: event.is_cancelled):
            yield (st.status_dataset(code, comment) if comment else code), ds

    def find_responses(self, identifier: Callable[[], Dataset], sop_class: str, lg: _AssocLog,
                       cancelled: Callable[[], bool]) -> Iterator[tuple[int, str, Dataset | None]]:
        """A C-FIND's responses (PS3.4 C.4.1.2 / C.4.1.3): ``(status, error comment, identifier
        or None)`` — pending ones with their match, then the final one.  ``identifier`` decodes
        the request's identifier (its failure is a status); ``cancelled`` says whether a
        C-CANCEL-RQ arrived (checked before every match).  Both DIMSE paths use it."""
        model = _FIND.get(sop_class, qr.STUDY_ROOT)
        try:
            req = qr.parse_identifier(identifier(), model)
        except HounsfieldError as exc:
            self._audit_query(lg, "", False, exc.reason)
            yield st.QR_IDENTIFIER_MISMATCH, exc.reason, None
            return
        except Exception as exc:  # noqa: BLE001 - undecodable identifier
            self._audit_query(lg, "", False, repr(exc))
            yield st.QR_UNABLE_TO_PROCESS, f"cannot read identifier: {exc}", None
            return
        detail = f"{req.level} {req.filters}"
        pending = st.PENDING_WARNING if req.unknown_matching else st.PENDING
        n = 0
        try:
            with self.archive.session() as s:
                for ds in qr.find(s, req, ae_title=self.settings.dicom.ae_title,
                                  case_insensitive_pn=self.settings.dicom.case_insensitive_pn):
                    if cancelled():
                        yield st.CANCEL, "", None
                        self._audit_query(lg, detail + f" cancelled after {n}", True)
                        return
                    n += 1
                    yield pending, "", ds
        except HounsfieldError as exc:
            self._audit_query(lg, detail, False, exc.reason)
            yield st.QR_UNABLE_TO_PROCESS, exc.reason, None
            return
        self._audit_query(lg, f"{detail}: {n} matches", True)
        yield st.SUCCESS, "", None

    @staticmethod
    def _audit_query(lg: _AssocLog, detail: str, ok: bool, reason: str = "") -> None:
        lg.add(audit.Action.C_FIND, "", "", ok, reason or detail[:200])

    # -- C-MOVE (PS3.4 C.4.2) / C-GET (PS3.4 C.4.3) -----------------------------------------
    def _select(self, event: evt.Event) -> tuple[list, str]:
        model = _RETRIEVE.get(str(event.request.AffectedSOPClassUID), qr.STUDY_ROOT)
        req = qr.parse_identifier(event.identifier, model)
        with self.archive.session() as s:
            rows = qr.select_instances(s, req)
            return [(i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.blob_key,
                     i.series.study.study_instance_uid, i.series.study.patient.patient_id)
                    for i in rows], req.level

    def _on_move(self, event: evt.Event):  # noqa: ANN202 - pynetdicom generator protocol
        assoc = event.assoc
        dest_ae = str(event.move_destination).strip()
        remote = next((r for r in self.settings.dicom.remotes.values()
                       if r.ae_title == dest_ae), None)
        if remote is None:
            log.warning("C-MOVE from %s to unknown destination %r", self._peer(assoc), dest_ae)
            self._log(assoc).add(audit.Action.C_MOVE, "", "", False,
                                 f"unknown move destination {dest_ae}", dest_ae)
            yield None, None
            return
        try:
            items, _level = self._select(event)
        except HounsfieldError as exc:
            yield remote.host, remote.port
            yield st.status_dataset(st.QR_IDENTIFIER_MISMATCH, exc.reason), None
            return
        holder: dict[str, Association] = {}

        def _accepted(e: evt.Event) -> None:
            holder["assoc"] = e.assoc

        contexts = propose_for((i[1], i[2]) for i in items) if items else None
        kwargs: dict = {"evt_handlers": [(evt.EVT_CONN_OPEN, self._on_conn_open),
                                         (evt.EVT_ACCEPTED, _accepted)]}
        if contexts:
            kwargs["contexts"] = contexts
        yield remote.host, remote.port, kwargs
        yield len(items)
        dest = f"{dest_ae}@{remote.host}:{remote.port}"
        yield from self._suboperations(event, items, lambda: holder.get("assoc"),
                                       audit.Action.C_MOVE, dest)

    def _on_get(self, event: evt.Event):  # noqa: ANN202
        try:
            items, _level = self._select(event)
        except HounsfieldError as exc:
            yield 0
            yield st.status_dataset(st.QR_IDENTIFIER_MISMATCH, exc.reason), None
            return
        yield len(items)
        yield from self._suboperations(event, items, lambda: event.assoc, audit.Action.C_GET,
                                       self._peer(event.assoc))

    def _suboperations(self, event: evt.Event, items: list, store_assoc, action: audit.Action,
                       dest: str):  # noqa: ANN001, ANN202
        lg = self._log(event.assoc)
        for sop, _cls, _ts, key, study, patient in items:
            if event.is_cancelled:
                yield st.CANCEL, None
                return
            try:
                ds = dcmread(self.archive.blobs.open(key))
                target = store_assoc()
                if target is not None:
                    ds, _how = fit_to_contexts(ds, target.accepted_contexts)
            except Exception as exc:  # noqa: BLE001 - one bad instance fails one sub-operation
                reason = exc.reason if isinstance(exc, HounsfieldError) else repr(exc)
                log.warning("%s of %s to %s failed: %s", action.value, sop, dest, reason)
                lg.add(action, study, patient, False, reason, dest)
                failed = Dataset()
                failed.FailedSOPInstanceUIDList = [sop]
                # pynetdicom ends the operation on a failure status: the final response counts
                # the remaining sub-operations as failed (PS3.4 C.4.2.3.1)
                yield st.QR_UNABLE_TO_PROCESS, failed
                return
            lg.add(action, study, patient, True, "", dest)
            yield st.PENDING, ds


    # -- MPPS N-CREATE / N-SET (PS3.4 F.7; the state machine is hounsfield.ingest.mpps) -------
    def _on_n_create(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        assoc, req = event.assoc, event.request
        uid = req.AffectedSOPInstanceUID
        try:
            attrs = event.attribute_list
        except Exception as exc:  # noqa: BLE001 - an undecodable request is a status too
            return mpps.Answer(mpps.PROCESSING_FAILURE,
                               f"cannot decode the attribute list: {exc}").status_dataset(), None
        answer = mpps.n_create(self.archive, attrs, str(uid) if uid else None,
                               calling_ae=assoc.requestor.ae_title.strip(),
                               source=self._peer(assoc))
        reply = None
        if answer.ok and answer.sop_instance_uid:  # PS3.7 10.1.5.1.4: the UID we assigned
            reply = Dataset()
            reply.AffectedSOPInstanceUID = answer.sop_instance_uid
        return answer.status_dataset(), reply

    def _on_n_set(self, event: evt.Event) -> tuple[Dataset, None]:
        assoc, req = event.assoc, event.request
        try:
            mods = event.modification_list
        except Exception as exc:  # noqa: BLE001
            return mpps.Answer(mpps.PROCESSING_FAILURE,
                               f"cannot decode the modification list: {exc}").status_dataset(), None
        answer = mpps.n_set(self.archive, str(req.RequestedSOPInstanceUID or ""), mods,
                            calling_ae=assoc.requestor.ae_title.strip(), source=self._peer(assoc))
        return answer.status_dataset(), None


class _Dispatch(reactor.RequestHandler):
    """Per connection: the lean storage path when the association only sends, otherwise
    pynetdicom with event-driven reactors."""

    def handle(self) -> None:
        node = getattr(self.server, "hf_node", None)
        if node is not None and node.try_lean(self.request, self.client_address):
            return
        super().handle()


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded acceptor, started and stopped by :class:`DicomNode` itself."""

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class _ReusePortServer(_Server):
    """Several node processes on one port: Linux SO_REUSEPORT spreads the associations."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _SharedContexts(list):
    """The supported presentation contexts, shared by every association.

    pynetdicom deep-copies the acceptor's contexts for each new association; with ~190 SOP
    classes x 18 transfer syntaxes that costs 50-80 ms of CPU per association here.
    Negotiation (``negotiate_as_acceptor``) only reads them, so one shared list is safe.
    """

    def __deepcopy__(self, memo: dict) -> list:
        return list(self)


def wait_until_listening(node: DicomNode, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((node.settings.dicom.host, node.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
