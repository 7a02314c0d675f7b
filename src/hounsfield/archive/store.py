"""Store parsed instances: blob first (fsynced), then the index rows in one commit.

The order is the durability rule: an instance is *acknowledged* (C-STORE success, STOW 200,
import summary) only after :func:`store_instances` returns, i.e. after its bytes are fsynced and
its rows committed.  A crash in between leaves at worst an orphan blob, which ``check`` finds
and repairs; never a row without its blob.

Duplicates by SOPInstanceUID: identical bytes are skipped (``duplicate``), and so is the same
data set in the same transfer syntax under a different Part 10 file meta or encoding (a file
imported from disk, later re-sent by C-STORE: the receiver writes its own meta, the sender may
drop trailing padding and group lengths); a different object is a
``conflict`` under the ``keep-first`` policy (the first is kept) or ``replaced`` under
``replace``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from hounsfield.archive.archive import Archive
from hounsfield.archive.blobstore import blob_key
from hounsfield.archive.hotindex import hot_index
from hounsfield.archive.models import Instance, Patient, Series, Study, utcnow
from hounsfield.archive.parse import ParsedInstance
from hounsfield.config import DuplicatePolicy
from hounsfield.errors import OutOfResources

Status = Literal["stored", "duplicate", "conflict", "replaced"]
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-put")


@dataclass
class StoreOutcome:
    status: Status
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


def store_instance(
    archive: Archive, parsed: ParsedInstance, *, source: str, site: str | None = None,
    policy: DuplicatePolicy | None = None,
) -> StoreOutcome:
    return store_instances(archive, [parsed], source=source, site=site, policy=policy)[0]


def store_instances(
    archive: Archive, batch: Sequence[ParsedInstance], *, source: str | Sequence[str],
    site: str | None = None, policy: DuplicatePolicy | None = None,
) -> list[StoreOutcome]:
    """Durably store ``batch``; returns one outcome per input, in order.

    ``source`` is the calling AE title or import path (one for all, or one per instance).
    Raises :class:`OutOfResources` when the disk or database cannot take the data; nothing of
    the batch is then acknowledged.
    """
    if not batch:
        return []
    sources = [source] * len(batch) if isinstance(source, str) else list(source)
    site = site or archive.settings.site
    policy = policy or archive.settings.dicom.duplicate_policy
    for attempt in range(5):
        try:
            return _store(archive, batch, sources, site, policy)
        except IntegrityError:
            if attempt == 4:
                raise
            # another writer created the same patient/study/series/instance first: retry sees it
        except OperationalError as exc:
            raise OutOfResources(f"index database refused the write: {exc.orig}") from exc
    raise AssertionError("unreachable")


def _store(archive: Archive, batch: Sequence[ParsedInstance], sources: list[str], site: str,
           policy: DuplicatePolicy) -> list[StoreOutcome]:
    uids = list({p.sop_instance_uid for p in batch})
    prewritten = all(p.data is None for p in batch)  # the caller wrote (and flushed) the blobs
    if not prewritten:
        with archive.session() as s:
            decision = _decide(batch, _existing(s.connection(), uids), policy,
                               _same_data_set_in(archive))
        blobs = archive.blobs
        futures = [_POOL.submit(_put_once, blobs, key, batch[i].data)
                   for i, key in decision[1] if batch[i].data is not None]
        for f in futures:
            f.result()  # raises OutOfResources on a full disk: nothing acknowledged
        blobs.sync(key for _i, key in decision[1])  # the batch made durable, before the commit
    return _index(archive, batch, sources, site, policy, None if prewritten else decision)


# statements built once (building a statement costs more CPU than running it on SQLite)
_I, _SE, _ST = Instance.__table__, Series.__table__, Study.__table__
_EXISTING = select(_I.c.sop_instance_uid, _I.c.sha256, _I.c.blob_key).where(
    _I.c.sop_instance_uid.in_(bindparam("uids", expanding=True)))
_CURRENT = select(_I.c.id, _I.c.sop_instance_uid, _I.c.sha256, _I.c.blob_key).where(
    _I.c.sop_instance_uid.in_(bindparam("uids", expanding=True)))
_SERIES = select(_SE.c.series_instance_uid, _SE.c.id).where(
    _SE.c.series_instance_uid.in_(bindparam("uids", expanding=True)))
_TOUCH_SERIES = update(_SE).where(_SE.c.id.in_(bindparam("pks", expanding=True))).values(
    last_received_at=bindparam("now"))
_TOUCH_STUDY = update(_ST).where(_ST.c.id.in_(
    select(_SE.c.study_pk).where(_SE.c.id.in_(bindparam("pks", expanding=True))))).values(
    last_received_at=bindparam("now"))
_INSERT = insert(_I)


def _existing(conn, uids: list[str]) -> dict[str, tuple[str, str]]:  # noqa: ANN001
    return {r.sop_instance_uid: (r.sha256, r.blob_key)
            for r in conn.execute(_EXISTING, {"uids": uids})}


SameDataSet = Callable[[ParsedInstance, str], bool]


def _decide(batch: Sequence[ParsedInstance], existing: dict[str, tuple[str, str]],
            policy: DuplicatePolicy, same_data_set: SameDataSet | None = None,
            ) -> tuple[list, list[tuple[int, str]], dict[str, str], list[str]]:
    """Per instance: duplicate / conflict / to write, given what is stored already; also the
    keys of blobs the caller wrote first (``data`` None) that a duplicate leaves unused."""
    outcomes: list[StoreOutcome | None] = [None] * len(batch)
    to_write: list[tuple[int, str]] = []
    replaced_old: dict[str, str] = {}
    unused: list[str] = []
    seen_in_batch: dict[str, str] = {}
    for i, p in enumerate(batch):
        uid = p.sop_instance_uid
        first = existing.get(uid)
        if first is None and uid in seen_in_batch:
            first = (seen_in_batch[uid], "")
        if first is not None:
            if first[0] == p.sha256:
                outcomes[i] = _outcome(p, "duplicate", "same SOPInstanceUID and identical bytes")
                continue
            if first[1] and same_data_set is not None and same_data_set(p, first[1]):
                outcomes[i] = _outcome(p, "duplicate", "same SOPInstanceUID and identical data "
                                       "set; only the file meta differs (the first is kept)")
                if p.data is None:
                    unused.append(blob_key(p.study_instance_uid, uid, p.sha256))
                continue
            if policy == "keep-first":
                outcomes[i] = _outcome(
                    p, "conflict",
                    "a different object with this SOPInstanceUID is already stored; kept the first",
                )
                continue
            if first[1]:
                replaced_old[uid] = first[1]
        seen_in_batch[uid] = p.sha256
        to_write.append((i, blob_key(p.study_instance_uid, uid, p.sha256)))
    # if replace policy sees the same UID twice in one batch, the last one wins
    last_index = {batch[i].sop_instance_uid: i for i, _k in to_write}
    to_write = [(i, k) for i, k in to_write if last_index[batch[i].sop_instance_uid] == i]
    for i, p in enumerate(batch):
        if outcomes[i] is None and last_index.get(p.sop_instance_uid) != i:
            outcomes[i] = _outcome(p, "replaced", "superseded by a later copy in the same batch")
    return outcomes, to_write, replaced_old, unused


def _same_data_set_in(archive: Archive) -> SameDataSet:
    """Whether an instance is the stored blob's object (see :func:`same_object`)."""
    blobs = archive.blobs

    def same(p: ParsedInstance, stored_key: str) -> bool:
        try:
            old = blobs.read(stored_key)
            new = p.data if p.data is not None else blobs.read(
                blob_key(p.study_instance_uid, p.sop_instance_uid, p.sha256))
        except OSError:
            return False
        return same_object(old, new)

    return same


def same_object(a: bytes, b: bytes) -> bool:
    """Whether two Part 10 files hold the same object: the same transfer syntax and the same
    data set element by element, ignoring the file meta and what a sender may re-encode without
    changing the object — group lengths (gggg,0000), Data Set Trailing Padding (FFFC,FFFC),
    which PS3.10 7.2 lets any application drop (dcmtk's storescu does), and sequence / item
    length encodings.  Asked only when the bytes differ."""
    import io

    import pydicom

    def load(data: bytes) -> pydicom.Dataset | None:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - an unreadable blob is simply not equal
            return None
        for tag in [t for t in ds.keys() if t.element == 0 or t == 0xFFFCFFFC]:
            del ds[tag]
        return ds

    da, db = load(a), load(b)
    if da is None or db is None:
        return False
    ts = [getattr(d.file_meta, "TransferSyntaxUID", None) for d in (da, db)]
    return ts[0] is not None and ts[0] == ts[1] and da == db


def _index(archive: Archive, batch: Sequence[ParsedInstance], sources: list[str], site: str,
           policy: DuplicatePolicy, decision: tuple | None) -> list[StoreOutcome]:
    """Commit the rows (Core statements: the ORM's per-statement cost was most of a C-STORE's
    CPU time).  ``decision`` None: decide inside the write transaction."""
    blobs = archive.blobs
    now = utcnow()
    hot = hot_index(archive.write_engine) if decision is None else None
    if hot is not None and hot.insert(
            [dict(p.instance, blob_key=blob_key(p.study_instance_uid, p.sop_instance_uid,
                                                p.sha256),
                  size=p.size, sha256=p.sha256, source=src[:1024], site=site, received_at=now,
                  warnings="\n".join(p.warnings), metadata_json=p.finish_json())
             for p, src in zip(batch, sources, strict=True)],
            [p.series_instance_uid for p in batch], now):
        return [_outcome(p, "stored") for p in batch]  # the common case, on the DB-API cursor
    written: list[str] = []
    with archive.write_engine.begin() as conn:  # Core: no ORM session for the common case
        inside = decision is None
        if inside:
            decision = _decide(batch, _existing(conn, list({p.sop_instance_uid for p in batch})),
                               policy, _same_data_set_in(archive))
        outcomes, to_write, replaced_old, unused = decision
        # re-check inside the write transaction: another writer may have committed meanwhile
        write_uids = [batch[i].sop_instance_uid for i, _k in to_write]
        current = {} if inside and policy == "keep-first" else {
            r.sop_instance_uid: r for r in conn.execute(_CURRENT, {"uids": write_uids})}
        series_pks = _series_pks(conn, [(batch[i], sources[i]) for i, _k in to_write], site,
                                 now)
        inserts = []
        for i, key in to_write:
            p = batch[i]
            cur = current.get(p.sop_instance_uid)
            if cur is not None and policy == "keep-first":
                same = cur.sha256 == p.sha256
                outcomes[i] = _outcome(p, "duplicate" if same else "conflict",
                                       "stored concurrently by another writer")
                continue
            values = _fit(Instance, dict(
                p.instance, blob_key=key, size=p.size, sha256=p.sha256,
                source=sources[i][:1024], site=site, received_at=now,
                warnings="\n".join(p.warnings), metadata_json=p.finish_json(),
                series_pk=series_pks[p.series_instance_uid]))
            if cur is not None:
                if cur.blob_key != key:
                    replaced_old.setdefault(p.sop_instance_uid, cur.blob_key)
                conn.execute(update(Instance.__table__).where(Instance.__table__.c.id == cur.id)
                             .values(**values))
                outcomes[i] = _outcome(p, "replaced", "replaced the object stored earlier")
            else:
                inserts.append(values)
                outcomes[i] = _outcome(p, "stored")
            written.append(key)
        if inserts:
            conn.execute(_INSERT, inserts)
        pks = list(set(series_pks.values()))
        if pks:
            conn.execute(_TOUCH_SERIES, {"pks": pks, "now": now})
            conn.execute(_TOUCH_STUDY, {"pks": pks, "now": now})
    for old in [*replaced_old.values(), *unused]:
        if old not in written:
            blobs.delete(old)
    # blobs written before the index decided (importer workers) that did not get a row
    for i, p in enumerate(batch):
        key = blob_key(p.study_instance_uid, p.sop_instance_uid, p.sha256)
        if p.data is None and outcomes[i] is not None and outcomes[i].status in (
                "conflict", "replaced") and key not in written:
            blobs.delete(key)
    return [o for o in outcomes if o is not None]


def _put_once(blobs, key: str, data: bytes | None) -> None:  # noqa: ANN001
    if data is not None and not blobs.exists(key):
        blobs.put(key, data, deferred=True)


def _series_pks(conn: Connection, items: list[tuple[ParsedInstance, str]], site: str,
                now: datetime) -> dict[str, int]:
    """SeriesInstanceUID -> primary key, creating patient/study/series rows that are missing
    (through an ORM session joined to ``conn``'s transaction, only then)."""
    wanted = {p.series_instance_uid: (p, src) for p, src in items}
    out = dict(conn.execute(_SERIES, {"uids": list(wanted)}).all())
    missing = [v for k, v in wanted.items() if k not in out]
    if not missing:
        return out
    with Session(bind=conn, join_transaction_mode="rollback_only") as s:
        _create_series(s, missing, site, now, out)
    return out


def _create_series(s: Session, missing: list, site: str, now: datetime,
                   out: dict[str, int]) -> None:
    study_uids = {p.study_instance_uid for p, _src in missing}
    studies = dict(s.execute(select(Study.study_instance_uid, Study.id)
                             .where(Study.study_instance_uid.in_(list(study_uids)))).all())
    patients: dict[tuple[str, str], Patient] = {}
    for p, src in missing:
        if p.study_instance_uid not in studies:
            pkey = (p.patient["patient_id"][:64], p.patient["issuer_of_patient_id"][:64])
            patient = patients.get(pkey) or s.scalar(
                select(Patient).where(Patient.patient_id == pkey[0],
                                      Patient.issuer_of_patient_id == pkey[1]))
            if patient is None:
                patient = Patient(created_at=now, **_fit(Patient, p.patient))
                s.add(patient)
            patients[pkey] = patient
            study = Study(patient=patient, site=site, created_at=now, last_received_at=now,
                          **_fit(Study, p.study))
            s.add(study)
            s.flush()
            studies[p.study_instance_uid] = study.id
        series = Series(study_pk=studies[p.study_instance_uid], source=src[:1024], site=site,
                        created_at=now, last_received_at=now, **_fit(Series, p.series))
        s.add(series)
        s.flush()
        out[p.series_instance_uid] = series.id


def _fit(model: type, values: dict) -> dict:
    """Clip strings to their column length (PostgreSQL enforces it; odd data can exceed it)."""
    table = model.__table__
    out = {}
    for k, v in values.items():
        col = table.columns.get(k)
        length = getattr(getattr(col, "type", None), "length", None)
        if isinstance(v, str) and length and len(v) > length:
            v = v[:length]
        out[k] = v
    return out


def _outcome(p: ParsedInstance, status: Status, reason: str = "") -> StoreOutcome:
    return StoreOutcome(status, p.sop_instance_uid, p.study_instance_uid, p.series_instance_uid,
                        reason, list(p.warnings))
