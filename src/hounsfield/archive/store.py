"""Store parsed instances: blob first (fsynced), then the index rows in one commit.

The order is the durability rule: an instance is *acknowledged* (C-STORE success, STOW 200,
import summary) only after :func:`store_instances` returns, i.e. after its bytes are fsynced and
its rows committed.  A crash in between leaves at worst an orphan blob, which ``check`` finds
and repairs; never a row without its blob.

Duplicates by SOPInstanceUID: identical bytes are skipped (``duplicate``); different bytes are a
``conflict`` under the ``keep-first`` policy (the first is kept) or ``replaced`` under
``replace``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from hounsfield.archive.archive import Archive
from hounsfield.archive.blobstore import blob_key
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
    with archive.session() as s:
        existing = {
            r.sop_instance_uid: (r.sha256, r.blob_key)
            for r in s.execute(
                select(Instance.sop_instance_uid, Instance.sha256, Instance.blob_key)
                .where(Instance.sop_instance_uid.in_(uids))
            )
        }
    outcomes: list[StoreOutcome | None] = [None] * len(batch)
    to_write: list[tuple[int, str]] = []
    replaced_old: dict[str, str] = {}
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
            if policy == "keep-first":
                outcomes[i] = _outcome(
                    p, "conflict",
                    "a different object with this SOPInstanceUID is already stored; kept the first",
                )
                continue
            if first[1]:
                replaced_old[uid] = first[1]
        seen_in_batch[uid] = p.sha256
        to_write.append((i, blob_key(uid, p.sha256)))
    # if replace policy sees the same UID twice in one batch, the last one wins
    last_index = {batch[i].sop_instance_uid: i for i, _k in to_write}
    to_write = [(i, k) for i, k in to_write if last_index[batch[i].sop_instance_uid] == i]
    for i, p in enumerate(batch):
        if outcomes[i] is None and last_index.get(p.sop_instance_uid) != i:
            outcomes[i] = _outcome(p, "replaced", "superseded by a later copy in the same batch")

    blobs = archive.blobs
    futures = [_POOL.submit(_put_once, blobs, key, batch[i].data) for i, key in to_write]
    for f in futures:
        f.result()  # raises OutOfResources on a full disk: nothing acknowledged

    now = utcnow()
    written: list[str] = []
    with archive.write_session() as s, s.begin():
        cache: dict[tuple[str, str], object] = {}
        for i, key in to_write:
            p = batch[i]
            series = _series(s, p, sources[i], site, now, cache)
            row = s.scalar(select(Instance).where(Instance.sop_instance_uid == p.sop_instance_uid))
            if row is not None and policy == "keep-first":
                # someone committed it between our check and now
                same = row.sha256 == p.sha256
                outcomes[i] = _outcome(p, "duplicate" if same else "conflict",
                                       "stored concurrently by another writer")
                continue
            values = dict(p.instance, blob_key=key, size=len(p.data), sha256=p.sha256,
                          source=sources[i][:1024], site=site, received_at=now,
                          warnings="\n".join(p.warnings), metadata_json=p.metadata_json)
            values = _fit(Instance, values)
            if row is not None:
                replaced_old.setdefault(p.sop_instance_uid, row.blob_key)
                for k, v in values.items():
                    setattr(row, k, v)
                row.series = series
                outcomes[i] = _outcome(p, "replaced", "replaced the object stored earlier")
            else:
                s.add(Instance(series=series, **values))
                outcomes[i] = _outcome(p, "stored")
            written.append(key)
        s.flush()
    for old in replaced_old.values():
        if old not in written:
            blobs.delete(old)
    return [o for o in outcomes if o is not None]


def _put_once(blobs, key: str, data: bytes) -> None:  # noqa: ANN001
    if not blobs.exists(key):
        blobs.put(key, data)


def _series(s: Session, p: ParsedInstance, source: str, site: str, now: datetime,
            cache: dict) -> Series:
    key = ("series", p.series_instance_uid)
    if key in cache:
        series = cache[key]
        series.last_received_at = now
        series.study.last_received_at = now
        return series
    series = s.scalar(select(Series).where(Series.series_instance_uid == p.series_instance_uid))
    if series is None:
        study = _study(s, p, site, now, cache)
        series = Series(study=study, source=source[:1024], site=site, created_at=now,
                        **_fit(Series, p.series))
        s.add(series)
    series.last_received_at = now
    series.study.last_received_at = now
    cache[key] = series
    return series


def _study(s: Session, p: ParsedInstance, site: str, now: datetime, cache: dict) -> Study:
    key = ("study", p.study_instance_uid)
    if key in cache:
        return cache[key]
    study = s.scalar(select(Study).where(Study.study_instance_uid == p.study_instance_uid))
    if study is None:
        pkey = ("patient", p.patient["patient_id"], p.patient["issuer_of_patient_id"])
        patient = cache.get(pkey) or s.scalar(
            select(Patient).where(Patient.patient_id == p.patient["patient_id"],
                                  Patient.issuer_of_patient_id == p.patient["issuer_of_patient_id"])
        )
        if patient is None:
            patient = Patient(created_at=now, **_fit(Patient, p.patient))
            s.add(patient)
        cache[pkey] = patient
        study = Study(patient=patient, site=site, created_at=now, **_fit(Study, p.study))
        s.add(study)
    cache[key] = study
    return study


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
