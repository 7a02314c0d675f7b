"""SCU side: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET towards other DICOM nodes.

Every association gets TCP_NODELAY, the node's timeouts, TLS when the remote says ``tls``, and
``scu_retries`` retries with back-off when it cannot be established.  Sending negotiates one
context per stored transfer syntax plus an uncompressed fallback, and transcodes
(:func:`~hounsfield.dicom.transfer.fit_to_contexts`) when the peer refused the stored syntax.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
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
from hounsfield.archive.query import instances_of
from hounsfield.config import RemoteNode, Settings
from hounsfield.dicom import status as st
from hounsfield.dicom.transfer import STORABLE, fit_to_contexts, propose_for
from hounsfield.errors import NotFound, PeerError
from hounsfield.ingest.security import client_tls, nodelay
from hounsfield.pacs.delivery import NO_ASSOCIATION, DeliveryReport, Item
from hounsfield.pacs.destinations import label

log = logging.getLogger(__name__)

FIND_MODELS = {"study": StudyRootQueryRetrieveInformationModelFind,
               "patient": PatientRootQueryRetrieveInformationModelFind}
MOVE_MODELS = {"study": StudyRootQueryRetrieveInformationModelMove,
               "patient": PatientRootQueryRetrieveInformationModelMove}
GET_MODELS = {"study": StudyRootQueryRetrieveInformationModelGet,
              "patient": PatientRootQueryRetrieveInformationModelGet}


def _on_open(event: evt.Event) -> None:
    nodelay(getattr(event.assoc.dul.socket, "socket", None))


def associate(settings: Settings, node: RemoteNode, contexts: Sequence[PresentationContext], *,
              roles: Sequence | None = None, handlers: Sequence = (),
              retries: int | None = None) -> Association:
    """An established association with ``node`` (retried ``retries``, default
    ``scu_retries``, times), else :class:`PeerError` saying why (refused, rejected, aborted,
    timed out).  A rejection's ``detail`` is ``{"rejected": result}`` (PS3.8 9.3.4: 1 =
    rejected-permanent, 2 = rejected-transient); ``{"no_contexts": [SOP classes]}`` when the
    peer accepted none of the proposed presentation contexts."""
    d = settings.dicom
    ae = AE(ae_title=d.ae_title)
    ae.acse_timeout = d.acse_timeout_s
    ae.dimse_timeout = d.dimse_timeout_s
    ae.network_timeout = d.network_timeout_s
    ae.maximum_pdu_size = d.max_pdu
    ae.requested_contexts = list(contexts)
    tls = client_tls(settings, node.host) if node.tls else None
    why, detail = "", None
    for attempt in range(d.scu_retries + 1 if retries is None else retries + 1):
        if attempt:
            time.sleep(d.scu_retry_delay_s * (2 ** (attempt - 1)))
        opened: list[bool] = []
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title,
                             ext_neg=list(roles or []), tls_args=tls,
                             evt_handlers=[(evt.EVT_CONN_OPEN, _on_open),
                                           (evt.EVT_CONN_OPEN, lambda _e: opened.append(True)),
                                           *handlers])
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            why = (f"association rejected by {label(node)} (result {rj.result}, source "
                   f"{rj.result_source}, reason {rj.diagnostic})" if rj else "rejected")
            detail = {"rejected": int(rj.result) if rj else 1}
            break  # a rejection is an answer: retrying will not change it
        if assoc.rejected_contexts and not assoc.accepted_contexts:  # pynetdicom aborted it
            refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
            why = (f"{label(node)} accepted none of the proposed presentation contexts "
                   f"({', '.join(UID(u).name or u for u in refused)})")
            detail = {"no_contexts": refused}
            break
        why = (f"association with {label(node)} aborted" if assoc.is_aborted and opened
               else f"cannot connect to {label(node)} (refused or timed out)")
        log.info("%s (attempt %d)", why, attempt + 1)
    raise PeerError(why, detail=detail)


def echo(settings: Settings, node: RemoteNode) -> float:
    """PS3.4 A: C-ECHO; returns the round trip in milliseconds."""
    t0 = time.perf_counter()
    assoc = associate(settings, node, [build_context(Verification)])
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(rsp, "Status", NO_ASSOCIATION)) if rsp else NO_ASSOCIATION
    if code != st.SUCCESS:
        raise PeerError(f"C-ECHO to {label(node)} failed: status {st.name(code)}"
                        if code >= 0 else f"no C-ECHO response from {label(node)}")
    return (time.perf_counter() - t0) * 1000


def send(archive: Archive, uids: Iterable[str], node: RemoteNode, *,
         on_item: Callable[[Item], None] | None = None) -> DeliveryReport:
    """PS3.4 B: C-STORE every instance under the given study/series/SOP instance UIDs.

    Failed instances are retried (a new association each round) up to ``scu_retries`` times.
    The report (also saved to the delivery log) lists every instance with its final status.
    """
    settings = archive.settings
    dest = label(node)
    report = DeliveryReport("C-STORE", dest)
    with archive.session() as s:
        rows = []
        for uid in uids:
            found = instances_of(s, uid)
            if not found:
                raise NotFound(f"nothing in the archive under UID {uid}")
            rows += [(i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.blob_key,
                      i.series.study.study_instance_uid) for i in found]
    todo = list(dict.fromkeys(rows))
    results: dict[str, Item] = {}
    for attempt in range(settings.dicom.scu_retries + 1):
        if not todo:
            break
        if attempt:
            time.sleep(settings.dicom.scu_retry_delay_s)
        try:
            assoc = associate(settings, node, propose_for((r[1], r[2]) for r in todo))
        except PeerError as exc:
            for r in todo:
                results[r[0]] = Item(r[0], r[4], NO_ASSOCIATION, attempt + 1, exc.reason)
            continue
        retry = []
        try:
            for sop, _cls, _ts, key, study in todo:
                item = _store_one(archive, assoc, sop, key, study, attempt + 1)
                results[sop] = item
                if on_item:
                    on_item(item)
                if not item.ok and item.status in (NO_ASSOCIATION, st.STORE_OUT_OF_RESOURCES,
                                                   st.PROCESSING_FAILURE):
                    retry.append((sop, _cls, _ts, key, study))
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        done = set(results) - {r[0] for r in retry}
        todo = [r for r in todo if r[0] not in done]
    report.items = [results[r[0]] for r in dict.fromkeys(rows) if r[0] in results]
    report.save(archive)
    _audit_out(archive, report, audit.Action.EXPORT)
    return report


def _store_one(archive: Archive, assoc: Association, sop: str, key: str, study: str,
               attempt: int, *, not_prepared: int = st.PROCESSING_FAILURE,
               preferred: Sequence[str] = ()) -> Item:
    """C-STORE one archived instance; ``not_prepared`` is the status reported when it could
    not be read or converted (nothing was sent); ``preferred``: a profile's transfer syntaxes,
    the object is converted into the first one the peer accepted."""
    try:
        ds = dcmread(io.BytesIO(archive.blobs.read(key)))
        ds, how = fit_to_contexts(ds, assoc.accepted_contexts, preferred)
    except Exception as exc:  # noqa: BLE001 - reported per instance
        reason = getattr(exc, "reason", None) or repr(exc)
        return Item(sop, study, not_prepared, attempt, f"not sent: {reason}")
    if not assoc.is_established:
        return Item(sop, study, NO_ASSOCIATION, attempt, "association lost")
    rsp = assoc.send_c_store(ds)
    if rsp is None or "Status" not in rsp:
        return Item(sop, study, NO_ASSOCIATION, attempt, "no response (association aborted "
                    "or DIMSE timeout)")
    code = int(rsp.Status)
    detail = how
    if "ErrorComment" in rsp:
        detail = (detail + "; " if detail else "") + str(rsp.ErrorComment)
    return Item(sop, study, code, attempt, detail or st.name(code))


def _audit_out(archive: Archive, report: DeliveryReport, action: audit.Action) -> None:
    by_study: dict[str, list[Item]] = {}
    for i in report.items:
        by_study.setdefault(i.study_instance_uid, []).append(i)
    entries = []
    for study, items in by_study.items():
        bad = [i for i in items if not i.ok]
        outcome = (audit.Outcome.SUCCESS if not bad else audit.Outcome.MAJOR_FAILURE
                   if len(bad) == len(items) else audit.Outcome.MINOR_FAILURE)
        entries.append(audit.Entry(action=action, actor=archive.settings.dicom.ae_title,
                                   role="SCU", destination=report.destination,
                                   study_instance_uid=study, outcome=outcome,
                                   detail=f"{report.operation}: {len(items) - len(bad)} ok, "
                                          f"{len(bad)} failed"))
    audit.record_many(archive, entries)


def find(settings: Settings, node: RemoteNode, identifier: Dataset, *,
         model: str = "study") -> list[Dataset]:
    """PS3.4 C.4.1: C-FIND; returns the matches, raises :class:`PeerError` on a failure status."""
    sop = FIND_MODELS[model]
    assoc = associate(settings, node, [build_context(sop)])
    out: list[Dataset] = []
    final = NO_ASSOCIATION
    try:
        for status, ds in assoc.send_c_find(identifier, sop):
            if status is None or "Status" not in status:
                break
            final = int(status.Status)
            if final in (st.PENDING, st.PENDING_WARNING) and ds is not None:
                out.append(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if final != st.SUCCESS:
        raise PeerError(f"C-FIND at {label(node)} ended with {st.name(final)}"
                        if final >= 0 else f"C-FIND at {label(node)}: no final response")
    return out


def move(settings: Settings, node: RemoteNode, identifier: Dataset, destination_ae: str, *,
         model: str = "study") -> tuple[int, dict[str, int]]:
    """PS3.4 C.4.2: C-MOVE to ``destination_ae``; returns (final status, sub-operation counts)."""
    sop = MOVE_MODELS[model]
    assoc = associate(settings, node, [build_context(sop)])
    return _retrieve(assoc, assoc.send_c_move(identifier, destination_ae, sop), node)


def get(archive: Archive, node: RemoteNode, identifier: Dataset, sop_classes: Sequence[str], *,
        model: str = "study") -> tuple[int, dict[str, int]]:
    """PS3.4 C.4.3: C-GET; the instances arrive on this association and are stored durably
    (through the archive's one write path) before each sub-operation is acknowledged."""
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances

    def on_store(event: evt.Event) -> int:
        try:
            parsed = parse_part10(event.encoded_dataset(), name="C-GET")
            out = store_instances(archive, [parsed], source=label(node))[0]
        except Exception as exc:  # noqa: BLE001
            code, _c = st.store_status(exc)
            return code
        return st.DUPLICATE_SOP_INSTANCE if out.status == "conflict" else st.SUCCESS

    sop = GET_MODELS[model]
    classes = list(dict.fromkeys(sop_classes))[:120]
    contexts = [build_context(sop)] + [build_context(c, list(STORABLE)) for c in classes]
    roles = [build_role(c, scp_role=True) for c in classes]
    assoc = associate(archive.settings, node, contexts, roles=roles,
                      handlers=[(evt.EVT_C_STORE, on_store)])
    return _retrieve(assoc, assoc.send_c_get(identifier, sop), node)


def _retrieve(assoc: Association, responses, node: RemoteNode) -> tuple[int, dict[str, int]]:  # noqa: ANN001
    final, counts = NO_ASSOCIATION, {}
    try:
        for status, _ds in responses:
            if status is None or "Status" not in status:
                break
            final = int(status.Status)
            counts = {"remaining": int(status.get("NumberOfRemainingSuboperations", 0) or 0),
                      "completed": int(status.get("NumberOfCompletedSuboperations", 0) or 0),
                      "failed": int(status.get("NumberOfFailedSuboperations", 0) or 0),
                      "warning": int(status.get("NumberOfWarningSuboperations", 0) or 0)}
    finally:
        if assoc.is_established:
            assoc.release()
    if final == NO_ASSOCIATION:
        raise PeerError(f"no final retrieve response from {label(node)}")
    return final, counts
