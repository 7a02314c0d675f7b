"""AI job records: create (idempotently), update, list, show, retry, cancel, supersede.

The :class:`~hounsfield.deploy.models.AiJob` row is what people see (console, CLI, API); the
DBOS workflow of the same ``workflow_id`` is what runs.  :func:`reconcile` brings rows whose
workflow ended outside our steps (cancelled, timed out, crashed too often) in line with the
engine, so a job never looks "running" forever.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from hounsfield.archive.models import utcnow
from hounsfield.audit import Action, Entry, Outcome, record
from hounsfield.deploy import engine
from hounsfield.deploy.models import ACTIVE_STATES, AiJob
from hounsfield.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

AI_WORKFLOW = "hounsfield.ai_job"


def idempotency_key(input_key: str, model_version: str, device_uid: str, profile: str,
                    destinations: list[str]) -> str:
    """One job per (input series content, model version, output profile, destinations)."""
    text = "\n".join([input_key, model_version, device_uid, profile, *sorted(destinations)])
    return hashlib.sha256(text.encode()).hexdigest()


def create_job(archive, *, key: str, study_uid: str, series_uid: str, trigger: str,  # noqa: ANN001
               actor: str, rule: str, model_ref: str, model_version: str, device_uid: str,
               profile: str, destinations: list[str], log_lines: list[str],
               operating_threshold: float | None = None) -> tuple[AiJob, bool]:
    """The job for ``key``: (job, created).  An existing job for the same key is returned as
    it is — the same study sent twice never makes a second set of results."""
    with archive.session() as s:
        old = s.scalars(select(AiJob).where(AiJob.idempotency_key == key)).first()
        if old is not None:
            s.expunge(old)
            return old, False
    job_id = "job-" + key[:24]
    job = AiJob(id=job_id, idempotency_key=key, workflow_id=job_id, study_instance_uid=study_uid,
                series_instance_uid=series_uid, trigger=trigger, actor=actor, rule=rule,
                model_ref=model_ref, model_version=model_version, device_uid=device_uid,
                operating_threshold=operating_threshold, profile=profile,
                destinations=list(destinations), state="queued",
                log=[_line(x) for x in log_lines], result_uids=[], findings=[], timings={})
    try:
        with archive.write_session() as s, s.begin():
            s.add(job)
    except IntegrityError:  # another router created it between our read and write
        return get_job(archive, job_id), False
    return get_job(archive, job_id), True


def _line(text: str) -> str:
    return f"{utcnow().strftime('%Y-%m-%dT%H:%M:%S')} {text}"


def get_job(archive, job_id: str) -> AiJob:  # noqa: ANN001
    with archive.session() as s:
        job = s.get(AiJob, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        s.expunge(job)
        return job


def update_job(archive, job_id: str, *, log_line: str | None = None,  # noqa: ANN001
               **values: Any) -> AiJob:
    """Set columns and append one line to the job's log (one transaction)."""
    with archive.write_session() as s, s.begin():
        job = s.get(AiJob, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        for k, v in values.items():
            setattr(job, k, v)
        if log_line:
            job.log = [*job.log, _line(log_line)]
        job.updated_at = utcnow()
        if values.get("state") in ("done", "failed", "dead", "cancelled"):
            job.finished_at = utcnow()
    return get_job(archive, job_id)


def list_jobs(archive, *, state: str | None = None, study_uid: str | None = None,  # noqa: ANN001
              limit: int = 100) -> list[AiJob]:
    q = select(AiJob).order_by(AiJob.created_at.desc()).limit(max(1, min(limit, 1000)))
    if state:
        states = [x.strip() for x in state.split(",") if x.strip()]
        from hounsfield.deploy.models import JOB_STATES

        bad = [x for x in states if x not in JOB_STATES]
        if bad:
            raise InvalidInput(f"unknown job state {bad[0]!r} (one of {', '.join(JOB_STATES)})")
        q = q.where(AiJob.state.in_(states))
    if study_uid:
        q = q.where(AiJob.study_instance_uid == study_uid)
    with archive.session() as s:
        rows = list(s.scalars(q))
        for r in rows:
            s.expunge(r)
    return rows


def reconcile(archive, jobs: list[AiJob] | None = None) -> int:  # noqa: ANN001
    """Align active job rows with their workflow's end state in the engine; returns how many
    rows changed.  (A workflow that timed out or was cancelled never ran our last step.)"""
    jobs = jobs if jobs is not None else list_jobs(archive, state=",".join(ACTIVE_STATES),
                                                   limit=1000)
    active = [j for j in jobs if j.state in ACTIVE_STATES]
    if not active:
        return 0
    found = engine.statuses(archive.settings, [j.workflow_id for j in active])
    changed = 0
    for j in active:
        st = found.get(j.workflow_id)
        if st is None:
            continue
        if st.status == "CANCELLED":
            deadline = st.workflow_deadline_epoch_ms
            timed_out = bool(deadline and deadline <= (st.updated_at or 0) + 1000)
            update_job(archive, j.id, state="cancelled" if not timed_out else "dead",
                       error="" if not timed_out else
                       f"timed out after {archive.settings.jobs.timeout_s:.0f} s",
                       log_line="timed out" if timed_out else "cancelled")
            changed += 1
        elif st.status in ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
            why = str(st.error) if st.error else st.status
            if st.status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED":
                why = "the worker died running it too many times (max recovery attempts)"
            update_job(archive, j.id, state="dead", error=why[:4000], log_line=f"dead: {why}")
            changed += 1
    return changed


def cancel_job(archive, job_id: str, *, actor: str) -> AiJob:  # noqa: ANN001
    job = get_job(archive, job_id)
    if job.state not in ACTIVE_STATES:
        raise Conflict(f"job {job_id} is {job.state}; only queued or running jobs can be "
                       "cancelled")
    engine.cancel(archive.settings, job.workflow_id)
    job = update_job(archive, job_id, state="cancelled", log_line=f"cancelled by {actor}")
    _audit(archive, "cancel", job, actor)
    return job


def retry_job(archive, job_id: str, *, actor: str) -> AiJob:  # noqa: ANN001
    """Re-queue a failed, dead or cancelled job (an operator's decision after a fix)."""
    job = get_job(archive, job_id)
    if job.state in ACTIVE_STATES or job.state in ("done", "superseded"):
        raise Conflict(f"job {job_id} is {job.state}; only failed, dead or cancelled jobs can "
                       "be retried")
    if engine.status(archive.settings, job.workflow_id) is None:
        raise Conflict(f"job {job_id} failed while it was routed ({job.error}), before the "
                       "engine ran it: fix the cause and run AI on the study again "
                       f"(hounsfield run-ai {job.study_instance_uid})")
    wf = engine.requeue(archive.settings, job.workflow_id)
    job = update_job(archive, job_id, state="queued", workflow_id=wf, error="",
                     log_line=f"re-queued by {actor} (workflow {wf})")
    _audit(archive, "retry", job, actor)
    return job


def supersede_older(archive, job: AiJob) -> list[str]:  # noqa: ANN001
    """Mark the study's earlier finished jobs of the same rule superseded by ``job``."""
    with archive.write_session() as s, s.begin():
        rows = list(s.scalars(select(AiJob).where(
            AiJob.study_instance_uid == job.study_instance_uid, AiJob.rule == job.rule,
            AiJob.id != job.id, AiJob.state == "done", AiJob.created_at < job.created_at)))
        for r in rows:
            r.state = "superseded"
            r.superseded_by = job.id
            r.log = [*r.log, _line(f"superseded by {job.id} (new instances in the study)")]
            r.updated_at = utcnow()
        return [r.id for r in rows]


def _audit(archive, verb: str, job: AiJob, actor: str,  # noqa: ANN001
           outcome: Outcome = Outcome.SUCCESS) -> None:
    try:
        record(archive, Entry(Action.AI_JOB, actor=actor, outcome=outcome,
                              study_instance_uid=job.study_instance_uid,
                              detail=f"{verb} {job.id}"))
    except Exception as exc:  # noqa: BLE001 - the audit writer logs its own failures
        log.warning("audit of %s %s failed: %s", verb, job.id, exc)


def job_dict(job: AiJob) -> dict[str, Any]:
    def iso(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    return {"id": job.id, "state": job.state, "study_instance_uid": job.study_instance_uid,
            "series_instance_uid": job.series_instance_uid, "trigger": job.trigger,
            "actor": job.actor, "rule": job.rule, "model": job.model_ref,
            "model_version": job.model_version, "device_uid": job.device_uid,
            "operating_threshold": job.operating_threshold,
            "profile": job.profile, "destinations": job.destinations,
            "attempts": job.attempts, "error": job.error, "log": job.log,
            "results": job.result_uids, "n_findings": job.n_findings,
            "findings": job.findings, "timings": job.timings,
            "superseded_by": job.superseded_by, "workflow_id": job.workflow_id,
            "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
            "finished_at": iso(job.finished_at)}
