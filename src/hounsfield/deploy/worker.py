"""The job worker component of ``serve`` (role ``worker``, and inside the embedded default).

It launches the job engine (DBOS recovers this executor's unfinished workflows first), then
every ``jobs.poll_s`` seconds routes the studies that became stable and were not routed yet
(each :class:`~hounsfield.ingest.models.StableEvent` is fired once: its key is
``stable:<event id>``; studies received before the pipeline was first enabled are not routed
automatically), fires the MPPS trigger for COMPLETED procedures whose instances all arrived
(:mod:`hounsfield.deploy.mpps_trigger`), and reconciles job rows with the engine.  Everything
it needs is in the databases, so any number of workers can run, and a restarted one catches up.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import String, and_, cast, exists, literal, select

from hounsfield.deploy import engine
from hounsfield.deploy.jobs import reconcile
from hounsfield.deploy.mpps_trigger import hold_stable, route_mpps
from hounsfield.deploy.models import RouteEvent
from hounsfield.deploy.pipeline import Trigger, fire
from hounsfield.deploy.ups_performer import UpsPerformer
from hounsfield.deploy.ups_requester import UpsRequester
from hounsfield.ingest.models import StableEvent

log = logging.getLogger(__name__)


ENABLED_KEY = "pipeline:enabled"


def pipeline_enabled_at(archive):  # noqa: ANN001, ANN201
    """When the pipeline first ran on this archive (recorded once, durably).  Studies received
    before it are the back catalogue: never routed automatically (``run-ai`` routes one on
    request), so switching AI on does not queue years of studies."""
    from sqlalchemy.exc import IntegrityError

    from hounsfield.archive.models import utcnow

    with archive.session() as s:
        at = s.scalar(select(RouteEvent.at).where(RouteEvent.trigger_key == ENABLED_KEY))
    if at is None:
        try:
            with archive.write_session() as s, s.begin():
                s.add(RouteEvent(trigger_key=ENABLED_KEY, study_instance_uid="",
                                 trigger="system", outcome="enabled",
                                 log=["the clinical pipeline routes studies received from now"]))
        except IntegrityError:
            pass
        with archive.session() as s:
            at = s.scalar(select(RouteEvent.at).where(RouteEvent.trigger_key == ENABLED_KEY))
    return at if at.tzinfo else at.replace(tzinfo=utcnow().tzinfo)


def unrouted_stable_studies(archive, *, after_id: int = 0, limit: int = 100):  # noqa: ANN001, ANN201
    """(event id, study uid) of study-stable events no router has fired yet, oldest first
    (studies received since the pipeline was enabled)."""
    key = literal("stable:") + cast(StableEvent.id, String)
    since = pipeline_enabled_at(archive)
    with archive.session() as s:
        return s.execute(
            select(StableEvent.id, StableEvent.study_instance_uid)
            .where(StableEvent.level == "STUDY", StableEvent.id > after_id)
            .where(StableEvent.last_received_at >= since)
            .where(~exists().where(and_(RouteEvent.trigger_key == key)))
            .order_by(StableEvent.id).limit(limit)).all()


def route_stable(archive, *, after_id: int = 0) -> tuple[int, int]:  # noqa: ANN001
    """Fire every unrouted study-stable event; returns (events fired, the last event id)."""
    n = 0
    last = after_id
    for event_id, study in unrouted_stable_studies(archive, after_id=after_id):
        try:
            trigger = Trigger(study, "stable", key=f"stable:{event_id}")
            fired = hold_stable(archive, trigger) or fire(archive, trigger)
            log.info("study %s stable: %s %s", study, fired.outcome, fired.job_id)
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop routing
            log.warning("routing study %s failed: %s", study, exc)
            continue  # not recorded: the next pass tries again
        n += 1
        last = max(last, event_id)
    return n, last


class JobWorker:
    name = "job worker"

    def __init__(self, archive, *, route: bool = True) -> None:  # noqa: ANN001
        self.archive = archive
        self.route = route
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ups = UpsPerformer(archive)
        self.ups_mirror = UpsRequester(archive)

    def start(self) -> None:
        engine.launch_worker(self.archive)
        pipeline_enabled_at(self.archive)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="job-router", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.archive.settings.jobs.poll_s
        while not self._stop.wait(interval):
            try:
                if self.route:
                    # first: a completed procedure beats the quiet timer
                    route_mpps(self.archive, enabled=pipeline_enabled_at(self.archive))
                    route_stable(self.archive)
                reconcile(self.archive)
                self.ups.run_once()  # UPS workitems: claim, progress, complete / cancel
                self.ups_mirror.run_once()  # jobs mirrored on an external UPS-RS manager
            except Exception as exc:  # noqa: BLE001 - keep going; the next pass retries
                log.warning("job router pass failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        engine.stop_worker()
