"""Export: send archived result objects (SEG, SR, SC, GSPS, KOS, PDF) to the configured destinations
(``[export.destinations.NAME]``) by C-STORE or STOW-RS, at most once per acknowledged object.

The job engine calls :func:`deliver` in a durable step, once per attempt; between attempts it
sleeps ``dest.retry.delay(attempt)`` and stops when an item is dead.  Each call:

1. keeps the objects whose kind the destination's output profile sends
   (:func:`hounsfield.pacs.profiles.effective`);
2. skips what the destination already acknowledged according to the delivery log
   (:func:`pending`), so a retried or repeated export sends only what is missing — where the
   profile asks for Storage Commitment, only what it also committed (:func:`acknowledged`,
   :mod:`hounsfield.pacs.commitment`);
3. sends the rest over one association (C-STORE) or in STOW-RS batches, holding one of the
   destination's ``max_associations`` slots in this process (:func:`slot`) — in the profile's
   transfer syntaxes when it lists them (each object converted into the accepted one;
   STOW-RS: the first), and, for DIMSE, after the destination's pre-flight check
   (:mod:`hounsfield.pacs.preflight`; its warnings are in the report's ``warnings``);
4. records one delivery-log row per object sent (operation ``C-STORE`` / ``STOW-RS``, status,
   attempt, detail) as each acknowledgement arrives, and an audit event per study.

Every item of the report has an ``outcome``: ``delivered``, ``retry`` (a transient failure:
the peer is down, busy, timed out, out of resources) or ``dead`` (a permanent refusal — SOP
class not supported, data set refused, credentials refused — or the retry policy's last
attempt failed).  See :func:`classify`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

from pydicom.uid import UID
from sqlalchemy import or_, select

from hounsfield import audit
from hounsfield.archive.archive import Archive
from hounsfield.archive.models import Instance
from hounsfield.config import (
    DimseDestination,
    RemoteNode,
    RetryPolicy,
    Settings,
    StowDestination,
)
from hounsfield.dicom import status as st
from hounsfield.dicom.transfer import accepted_syntaxes, convert, propose_for, propose_syntaxes
from hounsfield.errors import InvalidInput, NotFound, PeerError
from hounsfield.pacs import scu, stow
from hounsfield.pacs.delivery import (
    NO_ASSOCIATION,
    NOT_PREPARED,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    DeliveryReport,
    Item,
)
from hounsfield.pacs.destinations import label, node_of
from hounsfield.pacs.models import Delivery
from hounsfield.pacs.profiles import effective

__all__ = ["RetryPolicy", "acknowledged", "classify", "committed", "deliver", "destination",
           "kind_of", "pending", "slot", "stored"]

log = logging.getLogger(__name__)

#: delivery-log operations that count as an acknowledgement by an export destination
EXPORT_OPERATIONS = ("C-STORE", "STOW-RS")
#: delivery-log operation of a Storage Commitment result (see :mod:`hounsfield.pacs.models`)
COMMIT_OPERATION = "COMMIT"
Outcome = Literal["delivered", "retry", "dead"]

#: result kind of each SOP class an output profile can send
KINDS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",     # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7": "SEG",     # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",     # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",     # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",     # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",     # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35": "SR",     # Extensible SR
    "1.2.840.10008.5.1.4.1.1.7": "SC",         # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1": "SC",       # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2": "SC",       # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3": "SC",       # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4": "SC",       # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.11.1": "GSPS",    # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.88.59": "KOS",    # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",    # Encapsulated PDF
}


def kind_of(sop_class_uid: str) -> str | None:
    """``SEG`` / ``SR`` / ``SC`` / ``GSPS`` / ``KOS`` / ``PDF`` for a result SOP class; None
    for anything else."""
    return KINDS.get(str(sop_class_uid))


# -- transient or permanent ------------------------------------------------------------------
_TRANSIENT_DIMSE = {st.PROCESSING_FAILURE, 0x0213}  # processing failure, resource limitation


def classify(status: int) -> Outcome:
    """What a delivery status means for the next attempt.

    ``delivered``: success or a warning (PS3.7 C.1).  ``retry``: no association (-1),
    association rejected-transient (-2), out of resources (0xA7xx), processing failure
    (0x0110), resource limitation (0x0213), HTTP 408 / 429 / 5xx (-408, -429, -5xx), an
    instance a 200 / 202 response does not mention (-200, -202).
    ``dead``: everything else — association rejected-permanent (-3), SOP class not supported
    (0x0122), not authorized (0x0124), data set refused (0xA9xx, 0xCxxx), duplicate with other
    content (0x0111), HTTP 4xx (credentials refused, not found, conflict), an object we could
    not read (-4).
    """
    if st.is_success(status) or st.is_warning(status):
        return "delivered"
    if status in (NO_ASSOCIATION, REJECTED_TRANSIENT):
        return "retry"
    if status <= -100:  # -<HTTP status> (STOW-RS)
        http = -status
        return "retry" if http in (200, 202, 408, 429) or http >= 500 else "dead"
    if status < 0:  # REJECTED_PERMANENT, NOT_PREPARED
        return "dead"
    if (status & 0xFF00) == 0xA700 or status in _TRANSIENT_DIMSE:
        return "retry"
    return "dead"


# -- destinations and their limits -----------------------------------------------------------
def destination(settings: Settings, name: str) -> DimseDestination | StowDestination:
    """The configured destination ``name``; :class:`InvalidInput` listing the known ones."""
    dests = settings.export.destinations
    if name not in dests:
        known = ", ".join(sorted(dests)) or "none configured ([export.destinations.NAME])"
        raise InvalidInput(f"unknown export destination {name!r} (known: {known})")
    return dests[name]


_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


@contextmanager
def slot(name: str, limit: int) -> Iterator[None]:
    """Hold one of ``limit`` concurrent associations (or STOW-RS requests) to destination
    ``name`` in this process; blocks until one is free.

    This bounds the threads of one process; across worker processes the job engine puts the
    export steps of a destination on a queue whose concurrency is the same ``max_associations``
    (DBOS ``Queue(f"export-{name}", concurrency=max_associations)``).
    """
    with _SLOTS_LOCK:
        sem = _SLOTS.setdefault((name, limit), threading.BoundedSemaphore(limit))
    with sem:
        yield


# -- the delivery log ------------------------------------------------------------------------
def _acknowledged_clause():  # noqa: ANN202
    s = Delivery.status
    return or_(s == st.SUCCESS, s.in_((0x0001, 0x0107, 0x0116)), s.between(0xB000, 0xBFFF))


def stored(archive: Archive, sop_uids: Iterable[str], destination: str) -> set[str]:
    """The SOP instance UIDs among ``sop_uids`` that ``destination`` acknowledged (success or
    warning) by an export operation (C-STORE, STOW-RS) according to the delivery log — stored
    there, whether or not committed."""
    uids = list(dict.fromkeys(sop_uids))
    out: set[str] = set()
    with archive.session() as s:
        for i in range(0, len(uids), 500):
            out.update(s.scalars(
                select(Delivery.sop_instance_uid).distinct()
                .where(Delivery.destination == destination[:256],
                       Delivery.operation.in_(EXPORT_OPERATIONS),
                       Delivery.sop_instance_uid.in_(uids[i:i + 500]),
                       _acknowledged_clause())))
    return out


def committed(archive: Archive, sop_uids: Iterable[str], destination: str) -> set[str]:
    """The SOP instance UIDs among ``sop_uids`` whose latest ``COMMIT`` delivery-log row for
    ``destination`` is a success: the destination committed to keep them (PS3.4 Annex J) and
    has not reported a failure for them since."""
    uids = list(dict.fromkeys(sop_uids))
    latest: dict[str, int] = {}
    with archive.session() as s:
        for i in range(0, len(uids), 500):
            for sop, code in s.execute(
                    select(Delivery.sop_instance_uid, Delivery.status)
                    .where(Delivery.destination == destination[:256],
                           Delivery.operation == COMMIT_OPERATION,
                           Delivery.sop_instance_uid.in_(uids[i:i + 500]))
                    .order_by(Delivery.id)):
                latest[sop] = code
    return {sop for sop, code in latest.items() if code == st.SUCCESS}


def needs_commitment(settings: Settings, destination: str) -> bool:
    """Whether deliveries to ``destination`` count only once committed (its profile's, or its
    own, ``storage_commitment``); False for a name that is not an export destination."""
    if destination not in settings.export.destinations:
        return False
    return effective(settings, destination).storage_commitment


def acknowledged(archive: Archive, sop_uids: Iterable[str], destination: str) -> set[str]:
    """The SOP instance UIDs among ``sop_uids`` that ``destination`` acknowledged according to
    the delivery log: stored (C-STORE / STOW-RS success or warning) and — where the
    destination's profile asks for Storage Commitment — committed (:func:`committed`).  An
    instance the PACS reported as failed, or did not report within the destination's
    ``commitment_timeout_s``, is not acknowledged, so :func:`pending` sends it again."""
    uids = list(dict.fromkeys(sop_uids))
    done = stored(archive, uids, destination)
    if done and needs_commitment(archive.settings, destination):
        done &= committed(archive, done, destination)
    return done


def pending(archive: Archive, sop_uids: Iterable[str], destination: str) -> list[str]:
    """``sop_uids`` (in order, without repeats) that ``destination`` has not acknowledged yet."""
    uids = list(dict.fromkeys(sop_uids))
    done = acknowledged(archive, uids, destination)
    return [u for u in uids if u not in done]


# -- deliver ---------------------------------------------------------------------------------
def deliver(archive: Archive, sop_uids: Iterable[str], destination_name: str, *,
            attempt: int = 1, any_kind: Iterable[str] = ()) -> DeliveryReport:
    """Send the archived objects ``sop_uids`` that are still pending to ``destination_name``.

    ``attempt`` (1-based) is this try's number: it is recorded per object, and when it is the
    destination retry policy's last one a transient failure becomes ``dead`` ("gave up after
    N attempts").  Raises :class:`InvalidInput` for an unknown destination and
    :class:`NotFound` when an object is not in the archive (nothing is sent then).
    ``any_kind``: SOP instance UIDs sent whatever the profile's kinds (IOCM rejection notes, a
    KOS that a destination with ``supersede = "iocm"`` gets even when its profile sends no KOS).
    """
    if attempt < 1:
        raise InvalidInput(f"attempt numbers start at 1, got {attempt}")
    settings = archive.settings
    dest = destination(settings, destination_name)
    operation = "C-STORE" if dest.kind == "dimse" else "STOW-RS"
    report = DeliveryReport(operation, destination_name)
    uids = list(dict.fromkeys(sop_uids))
    rows = _rows(archive, uids)
    kinds = set(effective(settings, destination_name).kinds)
    always = set(any_kind)
    wanted = []
    for r in rows:
        if kind_of(r[1]) in kinds or r[0] in always:
            wanted.append(r)
        else:
            report.excluded.append(r[0])
            report.notes.append(f"not for {destination_name}: {r[0]} is "
                                f"{kind_of(r[1]) or UID(r[1]).name or r[1]}, profile "
                                f"{dest.profile} sends {', '.join(sorted(kinds))}")
    done = acknowledged(archive, [r[0] for r in wanted], destination_name)
    todo = [r for r in wanted if r[0] not in done]
    for r in wanted:
        if r[0] in done:
            report.skipped.append(r[0])
            log.info("export to %s: %s already acknowledged, skipped", destination_name, r[0])
    if report.skipped:
        report.notes.append(f"{len(report.skipped)} already acknowledged by {destination_name}, "
                            "not sent again")
    if not todo:
        return report

    def record(items: list[Item]) -> None:
        for i in items:
            _settle(i, dest.retry, attempt)
        DeliveryReport(operation, destination_name, items).save(archive)
        report.items.extend(items)

    eff = effective(settings, destination_name)
    with slot(destination_name, dest.max_associations):
        if isinstance(dest, DimseDestination):
            from hounsfield.pacs import preflight

            try:
                pf = preflight.ensure(archive, destination_name)
            except Exception as exc:  # noqa: BLE001 - a check must never stop the delivery
                log.exception("pre-flight of %s failed", destination_name)
                pf = preflight.Result(destination_name, dest.kind, "", dest.profile, "",
                                      "unreachable", warnings=[f"pre-flight failed: {exc!r}"])
            report.warnings.extend(pf.warnings)
            if pf.warnings:
                report.notes.append(f"pre-flight of {destination_name} ({pf.outcome}): "
                                    + "; ".join(pf.warnings))
            _c_store(archive, node_of(settings, dest), todo, attempt, record,
                     syntaxes=eff.transfer_syntaxes, refused=pf.refused_classes)
        else:
            target = eff.transfer_syntaxes[0] if eff.transfer_syntaxes else None
            objs = [stow.Outgoing(sop, study, _reader(archive, key, target), target or "")
                    for sop, _cls, _ts, key, study in todo]
            stow.store(dest, objs, attempt, on_batch=record)
    scu._audit_out(archive, report, audit.Action.EXPORT)
    return report


def _settle(item: Item, policy: RetryPolicy, attempt: int) -> None:
    item.outcome = classify(item.status)
    if item.outcome == "retry" and policy.dead(attempt):
        item.outcome = "dead"
        item.detail = f"gave up after {attempt} attempts: {item.detail}"


Row = tuple[str, str, str, str, str]  # sop, class, transfer syntax, blob key, study


def _rows(archive: Archive, uids: list[str]) -> list[Row]:
    found: dict[str, Row] = {}
    with archive.session() as s:
        for i in range(0, len(uids), 500):
            for inst in s.scalars(select(Instance).where(
                    Instance.sop_instance_uid.in_(uids[i:i + 500]))):
                found[inst.sop_instance_uid] = (
                    inst.sop_instance_uid, inst.sop_class_uid, inst.transfer_syntax_uid,
                    inst.blob_key, inst.series.study.study_instance_uid)
    missing = [u for u in uids if u not in found]
    if missing:
        raise NotFound(f"{len(missing)} object(s) to export are not in the archive: "
                       f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [found[u] for u in uids]


def _reader(archive: Archive, key: str, target: str | None):  # noqa: ANN202
    """Reads the archived object ``key`` (STOW-RS), converted into ``target`` when given."""
    def read() -> bytes:
        data = archive.blobs.read(key)
        if not target:
            return data
        import io

        from pydicom import dcmread

        ds, _how = convert(dcmread(io.BytesIO(data)), target)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    return read


def _c_store(archive: Archive, node: RemoteNode, todo: list[Row], attempt: int,
             record, *, syntaxes: tuple[str, ...] = (),  # noqa: ANN001
             refused: dict[str, str] | None = None) -> None:
    """One association for all of ``todo``, no in-call retries: the job engine's back-off
    decides when to try again.

    Contexts for exactly the SOP classes present: with the profile's ``syntaxes`` exactly those
    (each object converted into the one accepted), else the stored syntax plus the uncompressed
    fallback.  ``refused``: SOP classes the pre-flight found refused, named in the reason."""
    settings = archive.settings
    refused = refused or {}
    offered = f" in {', '.join(UID(t).name for t in syntaxes)}" if syntaxes else ""

    def refusal(cls: str) -> str:
        seen = (f"; the pre-flight found it refused too ({refused[cls]})" if cls in refused
                else "")
        return (f"{label(node)} refused the presentation context for {UID(cls).name or cls}"
                f"{offered} (SOP class not supported there){seen}")

    try:
        contexts = (propose_syntaxes((r[1] for r in todo), syntaxes) if syntaxes
                    else propose_for((r[1], r[2]) for r in todo))
        assoc = scu.associate(settings, node, contexts, retries=0)
    except PeerError as exc:
        why = exc.detail if isinstance(exc.detail, dict) else {}
        code = {1: REJECTED_PERMANENT, 2: REJECTED_TRANSIENT}.get(why.get("rejected"),
                                                                 NO_ASSOCIATION)
        if "no_contexts" in why:
            record([Item(sop, study, st.SOP_CLASS_NOT_SUPPORTED, attempt,
                         f"{refusal(cls)}: {exc.reason}") for sop, cls, _t, _k, study in todo])
            return
        record([Item(sop, study, code, attempt, exc.reason) for sop, _c, _t, _k, study in todo])
        return
    try:
        for sop, cls, _ts, key, study in todo:
            if not accepted_syntaxes(assoc.accepted_contexts, cls):
                item = Item(sop, study, st.SOP_CLASS_NOT_SUPPORTED, attempt, refusal(cls))
            elif not assoc.is_established:
                item = Item(sop, study, NO_ASSOCIATION, attempt, "association lost")
            else:
                item = scu._store_one(archive, assoc, sop, key, study, attempt,
                                      not_prepared=NOT_PREPARED, preferred=syntaxes)
            record([item])
    finally:
        if assoc.is_established:
            assoc.release()
