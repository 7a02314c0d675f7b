"""The MPPS trigger: a modality said the procedure is COMPLETED (PS3.4 F.7.2.2), so its study
is complete as soon as every instance the MPPS's Performed Series Sequence references is
stored — earlier and more reliable than any quiet timer.

:func:`route_mpps` runs on every pass of the job worker (:class:`~hounsfield.deploy.worker
.JobWorker`, every ``jobs.poll_s``), so the check happens right after the N-SET arrives and
again after each ingest: one indexed query finds the COMPLETED steps still waiting, one more
counts their referenced instances the archive lacks.  A complete one is fired once through the
pipeline's one door, ``fire(archive, Trigger(study, "mpps", key="mpps:<MPPS UID>",
actor=<the modality's AE title>))``; the later study-stable trigger for the same content gives
"unchanged" (the job's idempotency key is the series content, model, profile, destinations).

- **DISCONTINUED** steps are recorded and never routed; the quiet timer does not route their
  study either (:func:`hold_stable` records that decision as outcome ``discontinued``) unless
  another MPPS of the study COMPLETED.  A person can still ask for AI (``run-ai``, console).
- **Mismatch**: a COMPLETED step whose instances have not all arrived ``[mpps]
  mismatch_wait_s`` after its N-SET is flagged ``mismatch`` with the missing SOP Instance UIDs
  (console ``/mpps``, ``/api/mpps``); it is still watched for ``[mpps] late_arrival_h`` and
  routed if the rest arrives.
- **Back catalogue**: as for the stable trigger, a step that ended before the pipeline was
  first enabled is not routed automatically.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, func, select

from hounsfield.archive.models import Instance, Series, Study, utcnow
from hounsfield.deploy.pipeline import Fired, Trigger, _record, fire
from hounsfield.ingest.models import PerformedInstance, PerformedProcedureStep as PPS
from hounsfield.ingest.mpps import COMPLETED, DISCONTINUED

log = logging.getLogger(__name__)

#: at most this many missing SOP Instance UIDs are kept on a mismatched step (the count is exact)
MISSING_LISTED = 1000
WATCHED = ("waiting", "mismatch")


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def route_mpps(archive, *, enabled: datetime,  # noqa: ANN001
               now: datetime | None = None) -> list[tuple[str, str]]:
    """One pass: fire every COMPLETED MPPS whose instances are all stored, flag the overdue
    ones as mismatches.  ``enabled``: when the pipeline was first enabled (steps that ended
    before it are the back catalogue).  Returns (MPPS UID, what happened) for each step it
    changed."""
    now = now or utcnow()
    cfg = archive.settings.mpps
    watch_from = now - timedelta(hours=cfg.late_arrival_h)
    cols = (PPS.id, PPS.sop_instance_uid, PPS.trigger_state, PPS.ended_at, PPS.calling_ae,
            PPS.n_referenced, PPS.n_missing, PPS.study_uids)
    with archive.session() as s:
        # the waiting ones oldest first; the mismatched ones still watched newest first
        rows = s.execute(select(*cols).where(PPS.state == COMPLETED,
                                             PPS.trigger_state == "waiting")
                         .order_by(PPS.id).limit(500)).all()
        rows += s.execute(select(*cols).where(PPS.state == COMPLETED,
                                              PPS.trigger_state == "mismatch",
                                              PPS.ended_at >= watch_from)
                          .order_by(PPS.id.desc()).limit(200)).all()
        if not rows:
            return []
        missing = dict(s.execute(
            select(PerformedInstance.mpps_pk, func.count(PerformedInstance.id))
            .outerjoin(Instance, Instance.sop_instance_uid == PerformedInstance.sop_instance_uid)
            .where(PerformedInstance.mpps_pk.in_([r.id for r in rows]), Instance.id.is_(None))
            .group_by(PerformedInstance.mpps_pk)).all())
    enabled = _aware(enabled)
    done: list[tuple[str, str]] = []
    for r in rows:
        ended = _aware(r.ended_at) if r.ended_at else now
        n_missing = missing.get(r.id, 0)
        studies = _studies(archive, r.id, r.study_uids, r.n_referenced) if not n_missing else []
        absent = [f"study {u}" for u in r.study_uids] if not (n_missing or studies) else []
        n_missing = n_missing or len(absent)  # nothing referenced, the study not here either
        if not n_missing and ended < enabled:
            _mark(archive, r.id, trigger_state="back-catalogue", n_missing=0, missing=[],
                  note="ended before the clinical pipeline was enabled: not routed "
                       "automatically (run-ai routes it on request)")
            done.append((r.sop_instance_uid, "back-catalogue"))
        elif not n_missing:
            outcome = _fire(archive, r, studies, now)
            if outcome:
                done.append((r.sop_instance_uid, outcome))
        elif (now - ended).total_seconds() >= cfg.mismatch_wait_s and (
                r.trigger_state == "waiting" or n_missing != r.n_missing):
            _mark(archive, r.id, trigger_state="mismatch", n_missing=n_missing,
                  missing=absent or _missing_uids(archive, r.id),
                  note=f"{n_missing} referenced instance(s) not received "
                       f"{cfg.mismatch_wait_s:g} s after COMPLETED")
            if r.trigger_state == "waiting":
                log.warning("MPPS %s COMPLETED but %d referenced instance(s) never arrived "
                            "(mismatch)", r.sop_instance_uid, n_missing)
            done.append((r.sop_instance_uid, "mismatch"))
    return done


def _studies(archive, pk: int, scheduled: list, n_referenced: int) -> list[str]:  # noqa: ANN001
    """The studies the step's instances are stored in (an MPPS may name several scheduled
    studies; the images say which one they went to); with no instance referenced, the
    scheduled studies the archive has."""
    with archive.session() as s:
        if n_referenced:
            return list(s.scalars(
                select(Study.study_instance_uid).distinct()
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .join(PerformedInstance,
                      PerformedInstance.sop_instance_uid == Instance.sop_instance_uid)
                .where(PerformedInstance.mpps_pk == pk).order_by(Study.study_instance_uid)))
        return list(s.scalars(select(Study.study_instance_uid)
                              .where(Study.study_instance_uid.in_(list(scheduled or [])))))


def _missing_uids(archive, pk: int) -> list[str]:  # noqa: ANN001
    with archive.session() as s:
        return list(s.scalars(
            select(PerformedInstance.sop_instance_uid)
            .outerjoin(Instance, Instance.sop_instance_uid == PerformedInstance.sop_instance_uid)
            .where(PerformedInstance.mpps_pk == pk, Instance.id.is_(None))
            .order_by(PerformedInstance.id).limit(MISSING_LISTED)))


def _fire(archive, r, studies: list[str], now: datetime) -> str:  # noqa: ANN001
    outcomes, jobs = [], []
    for i, study in enumerate(studies):
        key = f"mpps:{r.sop_instance_uid}" + (f":{i}" if i else "")
        try:
            fired = fire(archive, Trigger(study, "mpps", key=key, actor=r.calling_ae or "mpps"))
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop routing
            log.warning("MPPS %s: routing study %s failed: %s", r.sop_instance_uid, study, exc)
            return ""  # nothing marked: the next pass tries again (same keys, same decision)
        log.info("MPPS %s COMPLETED, all %d instance(s) stored: study %s %s %s",
                 r.sop_instance_uid, r.n_referenced, study, fired.outcome, fired.job_id)
        outcomes.append(fired.outcome)
        jobs.append(fired.job_id)
    outcome = "job" if "job" in outcomes else outcomes[0]
    late = " (after a mismatch: the missing instances arrived)" \
        if r.trigger_state == "mismatch" else ""
    _mark(archive, r.id, trigger_state="fired", n_missing=0, missing=[], route_outcome=outcome,
          job_id=next((j for j in jobs if j), ""), fired_at=now,
          note=f"all {r.n_referenced} referenced instance(s) stored: {outcome}{late}")
    return outcome


def _mark(archive, pk: int, *, note: str = "", **values) -> None:  # noqa: ANN001, ANN003
    """Update a watched step (only while it is still watched: another worker may have fired
    it first)."""
    with archive.write_session() as s, s.begin():
        row = s.get(PPS, pk)
        if row is None or row.trigger_state not in WATCHED:
            return
        for k, v in values.items():
            setattr(row, k, v)
        row.updated_at = utcnow()
        if note:
            row.note = (row.note + "; " if row.note else "") + note
            row.note = row.note[-2000:]


def study_states(archive, study_uid: str) -> set[str]:  # noqa: ANN001
    """The states of every MPPS about a study: scheduled for it, or referencing instances
    stored in it."""
    with archive.session() as s:
        direct = set(s.scalars(select(PPS.state).where(PPS.study_instance_uid == study_uid)))
        via = set(s.scalars(
            select(PPS.state).distinct()
            .join(PerformedInstance, PerformedInstance.mpps_pk == PPS.id)
            .join(Instance, Instance.sop_instance_uid == PerformedInstance.sop_instance_uid)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, and_(Study.id == Series.study_pk,
                              Study.study_instance_uid == study_uid))))
    return direct | via


def hold_stable(archive, trigger: Trigger) -> Fired | None:  # noqa: ANN001
    """The quiet timer's decision for a study whose procedure was DISCONTINUED (and none of
    its MPPS COMPLETED): not routed — recorded like any decision (outcome ``discontinued``,
    so the stable event is not fired again).  None: route it as usual."""
    states = study_states(archive, trigger.study_instance_uid)
    if DISCONTINUED not in states or COMPLETED in states:
        return None
    fired = Fired("discontinued", trigger.study_instance_uid, log=[
        "the modality reported the procedure DISCONTINUED (MPPS): not routed; "
        "run-ai routes it on request"])
    _record(archive, trigger, fired)
    return fired


def pending_count(archive) -> dict[str, int]:  # noqa: ANN001
    """How many steps are in each trigger state (console summary)."""
    with archive.session() as s:
        return dict(s.execute(select(PPS.trigger_state, func.count(PPS.id))
                              .group_by(PPS.trigger_state)).all())

