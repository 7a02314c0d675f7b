"""The clinical pipeline on the web: ``/api/jobs``, ``/api/studies/{uid}/ai`` and the console's
jobs pages (list with retry / cancel, one job with its log) and "Run AI" button.

Reading jobs needs ``studies:read``; asking for AI, retrying and cancelling need ``ai:run``
(admins, radiologists, service accounts).  Every change is audited (the job functions do it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from hounsfield.deploy.jobs import (cancel_job, get_job, job_dict, list_jobs, reconcile,
                                    retry_job)
from hounsfield.deploy.pipeline import Trigger, explain, fire
from hounsfield.audit.principal import Permission
from hounsfield.web.deps import AiOperator, ArchiveDep, Reader
from hounsfield.web.pages import page

api = APIRouter(prefix="/api", tags=["AI jobs"])
pages = APIRouter(include_in_schema=False)


def _reconciled(archive, rows):  # noqa: ANN001, ANN202
    try:
        if reconcile(archive, rows):
            return [get_job(archive, j.id) for j in rows]
    except Exception:  # noqa: BLE001 - the engine's database unreachable: show what we know
        pass
    return rows


@api.get("/jobs", summary="AI jobs, newest first (filter by state and study)")
def jobs(archive: ArchiveDep, user: Reader, state: str | None = None,
         study: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    rows = _reconciled(archive, list_jobs(archive, state=state, study_uid=study, limit=limit))
    return [job_dict(j) for j in rows]


@api.get("/jobs/{job_id}", summary="one AI job with its log, timings, findings and results")
def job(job_id: str, archive: ArchiveDep, user: Reader) -> dict[str, Any]:
    return job_dict(_reconciled(archive, [get_job(archive, job_id[:64])])[0])


@api.post("/jobs/{job_id}/retry", summary="re-queue a failed, dead or cancelled job")
def retry(job_id: str, archive: ArchiveDep, user: AiOperator) -> dict[str, Any]:
    return job_dict(retry_job(archive, job_id[:64], actor=user.username))


@api.post("/jobs/{job_id}/cancel", summary="cancel a queued or running job")
def cancel(job_id: str, archive: ArchiveDep, user: AiOperator) -> dict[str, Any]:
    return job_dict(cancel_job(archive, job_id[:64], actor=user.username))


@api.post("/studies/{study_uid}/ai", summary="route a study now and queue its AI job")
def run_ai(study_uid: str, archive: ArchiveDep, user: AiOperator) -> dict[str, Any]:
    fired = fire(archive, Trigger(study_uid[:64], "api", actor=user.username))
    return {"outcome": fired.outcome, "job_id": fired.job_id, "rule": fired.rule,
            "log": fired.log}


@api.get("/studies/{study_uid}/route", summary="the routing decision, without running anything")
def route_explain(study_uid: str, archive: ArchiveDep, user: Reader) -> dict[str, Any]:
    return {"study_instance_uid": study_uid, "log": explain(archive, study_uid[:64])}


# -- console ----------------------------------------------------------------------------------
@pages.get("/jobs")
def jobs_page(request: Request, archive: ArchiveDep, user: Reader) -> Response:
    state = request.query_params.get("state", "").strip() or None
    rows = _reconciled(archive, list_jobs(archive, state=state, limit=200))
    return page(request, "jobs.html", jobs=rows, state=state or "",
                 can_run=user.can(Permission.AI_RUN))


@pages.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, archive: ArchiveDep, user: Reader) -> Response:
    j = _reconciled(archive, [get_job(archive, job_id[:64])])[0]
    return page(request, "job.html", job=j, can_run=user.can(Permission.AI_RUN))


@pages.post("/jobs/{job_id}/retry")
def job_retry(job_id: str, archive: ArchiveDep, user: AiOperator) -> Response:
    retry_job(archive, job_id[:64], actor=user.username)
    return RedirectResponse(f"/jobs/{job_id[:64]}", status_code=303)


@pages.post("/jobs/{job_id}/cancel")
def job_cancel(job_id: str, archive: ArchiveDep, user: AiOperator) -> Response:
    cancel_job(archive, job_id[:64], actor=user.username)
    return RedirectResponse(f"/jobs/{job_id[:64]}", status_code=303)


@pages.post("/studies/{study_uid}/run-ai")
def study_run_ai(study_uid: str, archive: ArchiveDep, user: AiOperator) -> Response:
    fired = fire(archive, Trigger(study_uid[:64], "console", actor=user.username))
    target = f"/jobs/{fired.job_id}" if fired.job_id else f"/studies/{study_uid[:64]}?routed={fired.outcome}"
    return RedirectResponse(target, status_code=303)


def study_ai_results(archive, study_uid: str) -> list[dict[str, Any]]:  # noqa: ANN001
    """The study page's AI section: the study's jobs (newest first) with their findings."""
    return [job_dict(j) for j in list_jobs(archive, study_uid=study_uid, limit=20)]
