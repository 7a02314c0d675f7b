"""Study-stable detection: a series / study is *stable* after ``stable_after_s`` with no new
instance (a configurable quiet period, default 3 s — not Orthanc's 60 s).

The monitor derives stability from the index itself (``Series/Study.last_received_at``), so it
needs no in-memory state: after a restart it catches up, and every event is a durable
:class:`~hounsfield.ingest.models.StableEvent` row that the router reads.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, exists, func, select
from sqlalchemy.exc import IntegrityError

from hounsfield.archive.archive import Archive
from hounsfield.archive.models import Instance, Series, Study, utcnow
from hounsfield.ingest.models import StableEvent

log = logging.getLogger(__name__)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def detect(archive: Archive, *, quiet_s: float | None = None, now: datetime | None = None,
           since: datetime | None = None) -> list[StableEvent]:
    """Record a :class:`StableEvent` for every series and study quiet for ``quiet_s``.

    Returns the new events (series first, then studies).  Idempotent: an event already recorded
    for the same ``last_received_at`` is not recorded again.  ``since``: only series and
    studies that received something after it (a monitor's later passes; the first pass after
    a start looks at everything).
    """
    quiet = quiet_s if quiet_s is not None else archive.settings.dicom.stable_after_s
    cutoff = (now or utcnow()) - timedelta(seconds=quiet)
    floor = since if since is not None else datetime.min.replace(tzinfo=timezone.utc)
    new: list[StableEvent] = []
    with archive.session() as s:
        series_rows = s.execute(
            select(Series.series_instance_uid, Study.study_instance_uid, Series.last_received_at,
                   select(func.count(Instance.id)).where(Instance.series_pk == Series.id)
                   .scalar_subquery())
            .join(Series.study)
            .where(Series.last_received_at <= cutoff, Series.last_received_at > floor)
            .where(~exists().where(and_(StableEvent.level == "SERIES",
                                        StableEvent.uid == Series.series_instance_uid,
                                        StableEvent.last_received_at >= Series.last_received_at)))
        ).all()
        study_rows = s.execute(
            select(Study.study_instance_uid, Study.last_received_at,
                   select(func.count(Instance.id)).join(Instance.series)
                   .where(Series.study_pk == Study.id).scalar_subquery())
            .where(Study.last_received_at <= cutoff, Study.last_received_at > floor)
            .where(~exists().where(and_(StableEvent.level == "STUDY",
                                        StableEvent.uid == Study.study_instance_uid,
                                        StableEvent.last_received_at >= Study.last_received_at)))
        ).all()
    # a study is stable only once all of its series are (they share the clock, so this holds)
    for uid, study_uid, last, n in series_rows:
        new.append(StableEvent(level="SERIES", uid=uid, study_instance_uid=study_uid,
                               last_received_at=last, instances=n or 0))
    for uid, last, n in study_rows:
        new.append(StableEvent(level="STUDY", uid=uid, study_instance_uid=uid,
                               last_received_at=last, instances=n or 0))
    if new:
        try:
            with archive.write_session() as s, s.begin():
                s.add_all(new)
        except IntegrityError:  # another monitor (scale-out) recorded them first
            return []
        for e in new:
            log.info("%s %s stable (%d instances)", e.level.lower(), e.uid, e.instances)
    return new


def stable_state(archive: Archive, study_uids: list[str]) -> dict[str, datetime | None]:
    """For each study: when it last became stable, or None while it is still receiving."""
    out: dict[str, datetime | None] = {u: None for u in study_uids}
    if not study_uids:
        return out
    with archive.session() as s:
        rows = s.execute(
            select(Study.study_instance_uid, func.max(StableEvent.stable_at))
            .join(StableEvent, and_(StableEvent.level == "STUDY",
                                    StableEvent.uid == Study.study_instance_uid,
                                    StableEvent.last_received_at >= Study.last_received_at))
            .where(Study.study_instance_uid.in_(study_uids))
            .group_by(Study.study_instance_uid)
        ).all()
    for uid, at in rows:
        out[uid] = _aware(at) if at else None
    return out


class StableMonitor:
    """Background thread running :func:`detect` every ``interval`` seconds; after its first
    pass it looks only at series and studies that received something lately, so a pass costs
    the same on an archive of a million series as on an empty one."""

    def __init__(self, archive: Archive, *, interval: float | None = None) -> None:
        self.archive = archive
        quiet = archive.settings.dicom.stable_after_s
        self.interval = interval if interval is not None else max(0.2, min(1.0, quiet / 3))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stable-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # a pass looks back this far before the previous pass's cutoff: a row whose commit became
    # visible after that pass, although its timestamp was taken before it, is still seen
    LOOKBACK = timedelta(seconds=60)

    def _run(self) -> None:
        since: datetime | None = None  # the first pass catches up on everything
        while not self._stop.wait(self.interval):
            started = utcnow()
            try:
                detect(self.archive, since=since)
            except Exception as exc:  # noqa: BLE001 - keep monitoring; the next pass retries
                log.warning("stable detection failed: %s", exc)
                continue
            quiet = self.archive.settings.dicom.stable_after_s
            since = started - timedelta(seconds=quiet) - self.LOOKBACK
