"""The clinical pipeline: trigger -> route -> durable job -> infer -> results -> export.

:func:`fire` is the one door every trigger uses (study stable, a person or a script; MPPS and
UPS-RS plug in the same way): it routes the study (rules, series selection, the model alias
resolved to a version), records the decision (:class:`~hounsfield.deploy.models.RouteEvent`,
also when nothing matched), creates the job idempotently and enqueues its workflow.

The workflows run in workers (:mod:`hounsfield.deploy.engine`):

``hounsfield.ai_job``   start -> run (load the series, check its geometry, run the warm model,
                        build SEG / SR / SC / GSPS / KOS / PDF, store them in the archive) ->
                        one export workflow per destination -> for each destination whose
                        profile says supersede = "iocm": an IOCM rejection note for the replaced
                        job's objects it acknowledged, exported the same way
                        (:mod:`hounsfield.deploy.supersede`) -> finish (done, or failed with
                        the reason)
``hounsfield.export``   deliver what the destination has not acknowledged yet; on a transient
                        failure sleep durably (exponential backoff, up to hours) and try again;
                        where the profile asks for Storage Commitment, request it and wait
                        durably for the report: objects not committed (failed, or no report
                        within commitment_timeout_s) are sent again on the next attempt;
                        dead after the destination's last attempt

Every step is idempotent: result UIDs are derived from (input content, model version, kind), the
archive keeps the first copy of an identical object, and delivery sends only what the
destination's delivery log does not show as acknowledged.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from dbos import DBOS, SetWorkflowID

from hounsfield.archive.models import utcnow
from hounsfield.deploy import engine
from hounsfield.deploy.jobs import (AI_WORKFLOW, create_job, get_job, idempotency_key,
                                    supersede_older, update_job)
from hounsfield.deploy.models import RouteEvent
from hounsfield.errors import HounsfieldError, InvalidInput

log = logging.getLogger(__name__)

EXPORT_WORKFLOW = "hounsfield.export"


# -- triggers ---------------------------------------------------------------------------------
@dataclass
class Trigger:
    """Something that asks for AI on a study.  ``key`` is unique per firing: the same key
    fired twice is one decision (a crashed router re-fires safely)."""

    study_instance_uid: str
    kind: str                      # stable | mpps | ups | manual | api | console
    key: str = ""
    actor: str = "system"

    def __post_init__(self) -> None:
        if not self.key:
            self.key = f"{self.kind}:{uuid.uuid4().hex}"


@dataclass
class Fired:
    """What a trigger led to."""

    outcome: str                   # job | unchanged | no-rule | no-series | no-model
    study_instance_uid: str
    rule: str = ""
    job_id: str = ""
    log: list[str] = field(default_factory=list)


def fire(archive, trigger: Trigger) -> Fired:  # noqa: ANN001
    """Route the study and, if a rule and a series qualify, create and enqueue its job."""
    from sqlalchemy import select

    from hounsfield.archive.query import get_study
    from hounsfield.errors import NotFound

    with archive.session() as s:
        if get_study(s, trigger.study_instance_uid) is None:
            raise NotFound(f"no study {trigger.study_instance_uid} in the archive")
        done = s.scalars(select(RouteEvent).where(RouteEvent.trigger_key == trigger.key)).first()
        if done is not None:
            return Fired(done.outcome, done.study_instance_uid, done.rule, done.job_id,
                         list(done.log))
    fired = _decide(archive, trigger)
    record_decision(archive, trigger, fired)
    return fired


def current_rules(settings):  # noqa: ANN001, ANN201
    """The routing rules in force (none while no rules file exists; a broken file is an
    error the trigger reports — the previous decision is not guessed)."""
    from hounsfield.deploy.rules import RuleSet, load_rules, profile_names, rules_path

    path = rules_path(settings)
    if not path.exists():
        return RuleSet(rules=[]), f"no routing rules file at {path}"
    return load_rules(path, profiles=profile_names(settings)), ""


def _decide(archive, trigger: Trigger) -> Fired:  # noqa: ANN001
    from hounsfield.deploy.selection import route

    settings = archive.settings
    study = trigger.study_instance_uid
    rules, note = current_rules(settings)
    decision = route(archive, study, rules)
    lines = ([note] if note else []) + list(decision.log)
    if decision.rule is None:
        lines.append("no rule matched: no job")
        return Fired("no-rule", study, "", "", lines)
    rule = decision.rule
    destinations = list(decision.destinations)
    common = dict(study_uid=study, trigger=trigger.kind, actor=trigger.actor, rule=rule,
                  model_ref=decision.model, profile=decision.profile,
                  destinations=destinations)
    if decision.series_uid is None:
        why = decision.reason or "no series qualified"
        key = idempotency_key(f"no-series:{trigger.key}", "", "", decision.profile, [])
        job, _ = create_job(archive, key=key, series_uid="", model_version="", device_uid="",
                            log_lines=[*lines, f"failed: {why}; nothing sent"], **common)
        update_job(archive, job.id, state="failed", error=why)
        return Fired("no-series", study, rule, job.id, lines)
    try:
        mv = _resolve_model(settings, decision.model)
    except HounsfieldError as exc:
        key = idempotency_key(f"no-model:{trigger.key}", "", "", decision.profile, [])
        job, _ = create_job(archive, key=key, series_uid=decision.series_uid,
                            model_version="", device_uid="",
                            log_lines=[*lines, f"failed: {exc.reason}"], **common)
        update_job(archive, job.id, state="failed", error=exc.reason)
        return Fired("no-model", study, rule, job.id, [*lines, exc.reason])
    from hounsfield.results.uids import series_content_key

    input_key = series_content_key(_series_content(archive, decision.series_uid))
    key = idempotency_key(input_key, mv.ref, mv.device_uid, decision.profile, destinations)
    lines.append(f"model {decision.model} -> {mv.ref} (device UID {mv.device_uid})")
    threshold, label = _operating_threshold(settings, mv, decision.model)
    if threshold is not None:
        lines.append(f"findings reported at probability >= {threshold:.3f}: the operating point "
                     f"of {label!r}, the evaluation that justified the promotion")
    job, created = create_job(archive, key=key, series_uid=decision.series_uid,
                              model_version=mv.ref, device_uid=mv.device_uid,
                              operating_threshold=threshold, log_lines=lines, **common)
    if job.state == "queued":
        engine.enqueue(settings, AI_WORKFLOW, engine.AI_QUEUE, job.workflow_id, job.id,
                       timeout_s=settings.jobs.timeout_s)
    if not created:
        lines.append(f"the same input, model and profile already have job {job.id} "
                     f"({job.state}): no second set of results")
        return Fired("unchanged", study, rule, job.id, lines)
    return Fired("job", study, rule, job.id, lines)


_registries: dict[str, Any] = {}


def warm_registry(settings) -> None:  # noqa: ANN001
    """Open the model registry client now (a worker calls it as it starts), so the first
    trigger does not pay for MLflow's schema check (~4 s)."""
    from hounsfield.registry.mlflow_registry import ModelRegistry, tracking_uri

    uri = tracking_uri(settings)
    if uri not in _registries:
        _registries[uri] = ModelRegistry(settings)


def _resolve_model(settings, ref: str):  # noqa: ANN001, ANN202
    """The version an alias names now (the registry client is kept per tracking store: opening
    one costs a schema check)."""
    from hounsfield.registry.approval import resolve_for_routing
    from hounsfield.registry.mlflow_registry import ModelRegistry, tracking_uri

    uri = tracking_uri(settings)
    reg = _registries.get(uri)
    if reg is None:
        reg = _registries[uri] = ModelRegistry(settings)
    return resolve_for_routing(reg, ref)


def _operating_threshold(settings, mv, ref: str):  # noqa: ANN001, ANN202
    from hounsfield.registry.approval import operating_threshold

    reg = _registries[_tracking(settings)]
    return operating_threshold(reg, mv, ref.partition("@")[2])


def _tracking(settings) -> str:  # noqa: ANN001
    from hounsfield.registry.mlflow_registry import tracking_uri

    return tracking_uri(settings)


def _series_content(archive, series_uid: str) -> list[tuple[str, str]]:  # noqa: ANN001
    from sqlalchemy import select

    from hounsfield.archive.models import Instance, Series

    with archive.session() as s:
        return [(a, b) for a, b in s.execute(
            select(Instance.sop_instance_uid, Instance.sha256).join(Instance.series)
            .where(Series.series_instance_uid == series_uid))]


def record_decision(archive, trigger: Trigger, fired: Fired) -> None:  # noqa: ANN001
    """Record a trigger's outcome (a route event and its audit entry), once per trigger key;
    :func:`fire` calls it, and so does a trigger that decides not to route (a discontinued
    procedure)."""
    from sqlalchemy.exc import IntegrityError

    from hounsfield.audit import Action, Entry, record

    try:
        with archive.write_session() as s, s.begin():
            s.add(RouteEvent(trigger_key=trigger.key[:128],
                             study_instance_uid=trigger.study_instance_uid,
                             trigger=trigger.kind, actor=trigger.actor[:128],
                             outcome=fired.outcome, rule=fired.rule or "", job_id=fired.job_id,
                             log=fired.log))
    except IntegrityError:  # recorded by another router first: same decision
        return
    record(archive, Entry(Action.AI_JOB, actor=trigger.actor,
                          study_instance_uid=trigger.study_instance_uid,
                          detail=f"{trigger.kind} trigger: {fired.outcome}"
                          + (f" {fired.job_id}" if fired.job_id else "")))


# -- the AI job workflow ----------------------------------------------------------------------
class ModelUnavailable(HounsfieldError):
    """The model version's files are missing or cannot be loaded."""

    http_status = 503


def _transient(exc: BaseException) -> bool:
    """Worth retrying: I/O and database hiccups — not bad input, a broken series, a model that
    cannot load or a bug (those fail the job at once, with the reason)."""
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, (OSError, TimeoutError, DBAPIError)) and \
        not isinstance(exc, HounsfieldError)


@DBOS.step(name="hounsfield.ai_job.start")
def _start(job_id: str) -> dict:
    archive = engine.worker_archive()
    job = get_job(archive, job_id)
    wait = (utcnow() - _aware(job.created_at)).total_seconds()
    job = update_job(archive, job_id, state="running",
                     timings={**job.timings, "queue_wait_s": round(wait, 3)},
                     log_line=f"dequeued by worker {archive.settings.jobs.executor_id}")
    return {"destinations": list(job.destinations), "profile": job.profile}


def _aware(dt):  # noqa: ANN001, ANN202
    from datetime import timezone

    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@DBOS.step(name="hounsfield.ai_job.run", retries_allowed=True, max_attempts=4,
           interval_seconds=2.0, backoff_rate=2.0, should_retry=_transient)
def _run(job_id: str) -> dict:
    """Load, infer, build and store; a permanent problem returns ``{"error": reason}``."""
    archive = engine.worker_archive()
    job = get_job(archive, job_id)
    # counted here, not in the start step: DBOS re-runs an unfinished step after a crash
    job = update_job(archive, job_id, state="running", attempts=job.attempts + 1,
                     log_line=f"inference attempt {job.attempts + 1} on worker "
                              f"{archive.settings.jobs.executor_id}")
    try:
        return run_job(archive, job)
    except BaseException as exc:
        if engine.stopping():  # shutting down under it: record nothing, recovery re-runs it
            engine.abandon()
        if isinstance(exc, HounsfieldError):
            update_job(archive, job_id, state="failed", error=exc.reason,
                       log_line=f"failed: {exc.reason}; nothing sent")
            return {"error": exc.reason}
        if not isinstance(exc, Exception):
            raise
        if _transient(exc):
            update_job(archive, job_id, log_line=f"transient error, retried with backoff: "
                                                 f"{type(exc).__name__}: {exc}")
            raise
        log.exception("job %s: internal error", job_id)
        why = f"internal error ({type(exc).__name__}: {exc}); see the worker's log"
        update_job(archive, job_id, state="failed", error=why[:4000],
                   log_line=f"failed: {why}; nothing sent")
        return {"error": why}


def run_job(archive, job) -> dict:  # noqa: ANN001
    """The job's work, outside DBOS (the step above wraps it; a benchmark times it)."""
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances
    from hounsfield.imaging.series import read_dataset, volume_from_datasets
    from hounsfield.infer import load_model
    from hounsfield.results import AIModel, build_results
    from hounsfield.results.uids import series_content_key

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    datasets, content = _series_datasets(archive, job.series_instance_uid, read_dataset)
    vol = volume_from_datasets(datasets)
    t["volume_load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        runner = load_model(archive.settings, job.model_version,
                            device=archive.settings.jobs.device)
    except HounsfieldError as exc:
        raise ModelUnavailable(f"model {job.model_version} cannot be loaded: {exc.reason}") \
            from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises torch/pickle errors
        raise ModelUnavailable(f"model {job.model_version} cannot be loaded: "
                               f"{type(exc).__name__}: {exc}") from exc
    t["model_load_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    inference = runner.run_volume(vol)
    t["inference_s"] = time.perf_counter() - t2
    found = inference.findings
    if job.operating_threshold is not None:
        found = [f for f in found if f.probability >= job.operating_threshold]
    t3 = time.perf_counter()
    name, _, version = job.model_version.partition("@")
    from hounsfield import __version__

    model = AIModel(name=name, version=version, device_uid=job.device_uid,
                    software_version=__version__)
    from hounsfield.deploy.supersede import predecessor_refs
    from hounsfield.pacs.profiles import job_kinds

    # the rule's profile and every destination's: each destination gets what it can show
    results = build_results(datasets, vol, found, model,
                            input_key=series_content_key(content),
                            profile_kinds=set(job_kinds(archive.settings, job.profile,
                                                        list(job.destinations))),
                            created=_aware(job.created_at),
                            predecessors=predecessor_refs(archive, job))
    t["build_s"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    from pydicom.filebase import DicomBytesIO

    parsed = []
    for obj in results.objects:
        buf = DicomBytesIO()
        obj.dataset.save_as(buf, enforce_file_format=True)
        parsed.append(parse_part10(buf.getvalue()))
    outcomes = store_instances(archive, parsed, source=f"ai:{job.id}")
    bad = [o for o in outcomes if o.status not in ("stored", "duplicate")]
    if bad:
        raise ModelUnavailable("storing the results failed: "
                               + "; ".join(f"{o.sop_instance_uid}: {o.status} {o.reason}"
                                           for o in bad[:3]))
    t["store_s"] = time.perf_counter() - t4
    uids = [{"kind": o.kind, "sop_instance_uid": str(o.dataset.SOPInstanceUID),
             "series_instance_uid": str(o.dataset.SeriesInstanceUID),
             "sop_class_uid": str(o.dataset.SOPClassUID)} for o in results.objects]
    n = len(found)
    sc_series = {str(o.dataset.SOPInstanceUID): str(o.dataset.SeriesInstanceUID)
                 for o in results.objects if o.kind.startswith("SC")}
    findings = [{"label": f.label, "tracking_uid": f.tracking_uid, "x_mm": f.x_mm,
                 "y_mm": f.y_mm, "z_mm": f.z_mm, "diameter_mm": f.long_axis_mm,
                 "reported_diameter_mm": f.reported_diameter_mm, "volume_mm3": f.volume_mm3,
                 "probability": f.probability, "boundary_found": f.boundary_found,
                 "segmentation_note": f.segmentation_note,
                 "slice_sop_instance_uid": f.source_sop_instance_uid,
                 "sc_sop_instance_uid": f.key_image_sop_instance_uid or "",
                 "sc_series_instance_uid": sc_series.get(f.key_image_sop_instance_uid or "", "")}
                for f in results.findings]
    timings = {**job.timings, **{k: round(v, 3) for k, v in t.items()}}
    below = len(inference.findings) - n
    hidden = f" ({below} candidate(s) below the operating threshold not reported)" if below else ""
    summary = (f"{n} finding(s)" if n else "no findings") + hidden + \
        f"; {len(uids)} result object(s) stored: " + \
        ", ".join(sorted({u['kind'] for u in uids}))
    update_job(archive, job.id, result_uids=uids, n_findings=n, timings=timings,
               findings=findings,
               state="exporting" if job.destinations else "running",
               log_line=f"{summary} (inference {t['inference_s']:.1f} s)")
    return {"uids": uids, "findings": n}


def _series_datasets(archive, series_uid: str, read):  # noqa: ANN001, ANN202
    from sqlalchemy import select

    from hounsfield.archive.models import Instance, Series
    from hounsfield.errors import NotFound

    with archive.session() as s:
        rows = s.execute(select(Instance.sop_instance_uid, Instance.blob_key, Instance.sha256)
                         .join(Instance.series)
                         .where(Series.series_instance_uid == series_uid)).all()
    if not rows:
        raise NotFound(f"series {series_uid} is no longer in the archive")
    return ([read(archive.blobs.read(key), name=sop) for sop, key, _h in rows],
            [(sop, h) for sop, _k, h in rows])


@DBOS.step(name="hounsfield.ai_job.dead")
def _dead(job_id: str, why: str) -> dict:
    update_job(engine.worker_archive(), job_id, state="dead", error=why,
               log_line=f"dead: {why}")
    return {"state": "dead", "error": why}


@DBOS.step(name="hounsfield.ai_job.withdraw")
def _rejection(job_id: str, destination: str) -> dict | None:
    """Build and store the IOCM rejection note of what ``destination`` acknowledged of the
    replaced jobs (None: nothing to withdraw there, or its profile says "version")."""
    from hounsfield.deploy.supersede import REJECTION, rejection_for

    archive = engine.worker_archive()
    job = get_job(archive, job_id)
    note = rejection_for(archive, job, destination)
    if note is None:
        return None
    kept = [r for r in job.result_uids if r["sop_instance_uid"] != note["sop_instance_uid"]]
    update_job(archive, job_id, result_uids=[*kept, note], log_line=(
        f"{destination}: withdrawing {len(note['rejects'])} superseded object(s) with an "
        f"IOCM rejection note ({REJECTION} {note['sop_instance_uid']})"))
    return note


@DBOS.step(name="hounsfield.ai_job.finish")
def _finish(job_id: str, exports: list[dict], withdrawals: list[dict] | None = None) -> dict:
    archive = engine.worker_archive()
    dead = [e for e in exports if not e.get("ok")]
    if dead:
        why = "; ".join(f"{e['destination']}: {e.get('reason', 'not delivered')}" for e in dead)
        job = update_job(archive, job_id, state="dead", error=f"delivery failed: {why}",
                         log_line=f"dead: delivery failed: {why}")
    else:
        sent = ", ".join(e["destination"] + (f" ({e['committed']} committed)"
                                             if "committed" in e else "")
                         for e in exports) or "no destination"
        job = get_job(archive, job_id)
        timings = {**job.timings, **{f"export_{e['destination']}_s": round(e.get("seconds", 0), 3)
                                     for e in exports}}
        job = update_job(archive, job_id, state="done", timings=timings,
                         log_line=f"done; delivered to {sent}")
    old = supersede_older(archive, job) if not dead else []
    if old:
        update_job(archive, job_id, log_line="supersedes " + ", ".join(old))
    for w in withdrawals or []:
        if w.get("ok"):
            line = (f"{w['destination']}: withdrew {len(w['rejects'])} superseded object(s) "
                    f"(rejection note {w['note']} acknowledged): " + ", ".join(w["rejects"]))
        else:
            line = (f"{w['destination']}: the rejection note {w['note']} was not delivered "
                    f"({w.get('reason', 'refused')}); the superseded objects stay there")
        job = update_job(archive, job_id, log_line=line[:4000])
    return {"state": job.state}


@DBOS.workflow(name=AI_WORKFLOW, max_recovery_attempts=5)
def ai_job_workflow(job_id: str) -> dict:
    info = _start(job_id)
    try:
        out = _run(job_id)
    except Exception as exc:  # retries exhausted (DBOSMaxStepRetriesExceeded) on I/O errors
        return _dead(job_id, f"{exc}: {getattr(exc, 'errors', '') or ''}"[:4000])
    if "error" in out:
        return {"state": "failed", "error": out["error"]}
    handles = []
    for dest in info["destinations"]:
        with SetWorkflowID(f"{DBOS.workflow_id}:export:{dest}"):
            q = DBOS.retrieve_queue(engine.export_queue(dest))
            if q is None:
                handles.append((dest, None))
                continue
            handles.append((dest, q.enqueue(export_workflow, job_id, dest, out["uids"])))
    exports = []
    for dest, h in handles:
        if h is None:
            exports.append({"destination": dest, "ok": False,
                            "reason": "destination is not configured"})
        else:
            exports.append(h.get_result())
    withdrawals = []
    for e in exports:  # after the new results are there: withdraw what they replace
        if not e.get("ok"):
            continue
        note = _rejection(job_id, e["destination"])
        if note is None:
            continue
        with SetWorkflowID(f"{DBOS.workflow_id}:withdraw:{e['destination']}"):
            q = DBOS.retrieve_queue(engine.export_queue(e["destination"]))
            h = q.enqueue(export_workflow, job_id, e["destination"], [note])
        withdrawals.append({**h.get_result(), "note": note["sop_instance_uid"],
                            "rejects": note["rejects"]})
    return _finish(job_id, exports, withdrawals)


# -- export -----------------------------------------------------------------------------------
@DBOS.step(name="hounsfield.export.deliver")
def _deliver(job_id: str, destination: str, uids: list[dict], attempt: int) -> dict:
    """One delivery attempt of a job's results to one destination (its output profile picks
    the kinds; what it already acknowledged is skipped)."""
    from hounsfield.pacs.export import deliver

    archive = engine.worker_archive()
    t0 = time.perf_counter()
    try:
        report = deliver(archive, [u["sop_instance_uid"] for u in uids], destination,
                         attempt=attempt,
                         any_kind=[u["sop_instance_uid"] for u in uids  # IOCM rejection notes
                                   if u.get("kind") == "REJECTION"])
    except BaseException:
        if engine.stopping():  # as in the run step: leave the attempt for recovery
            engine.abandon()
        raise
    seconds = time.perf_counter() - t0
    if report.warnings and attempt == 1:
        update_job(archive, job_id, log_line=f"{destination}: pre-flight warning: "
                                             + "; ".join(report.warnings))
    retry = [i.sop_instance_uid for i in report.retry]
    dead = [i.sop_instance_uid for i in report.dead]
    detail = "; ".join(sorted({i.detail for i in report.items
                               if i.outcome != "delivered" and i.detail}))[:500]
    sent = report.sent
    update_job(archive, job_id, log_line=(
        f"{destination}: attempt {attempt}: {sent} delivered"
        + (f", {len(report.skipped)} already there" if report.skipped else "")
        + (f", {len(retry)} to retry" if retry else "")
        + (f", {len(dead)} dead" if dead else "")
        + (f" ({detail})" if detail else "") + f" in {seconds:.2f} s"))
    return {"retry": len(retry), "dead": dead, "sent": sent, "detail": detail,
            "seconds": round(seconds, 3)}


@DBOS.workflow(name=EXPORT_WORKFLOW, max_recovery_attempts=50)
def export_workflow(job_id: str, destination: str, uids: list[dict]) -> dict:
    from hounsfield.pacs.export import destination as destination_settings
    from hounsfield.pacs.profiles import effective

    settings = engine.worker_archive().settings
    dest = destination_settings(settings, destination)
    policy = dest.retry
    commit = effective(settings, destination).storage_commitment
    attempt = 1
    t = 0.0
    while True:
        r = _deliver(job_id, destination, uids, attempt)
        t += r["seconds"]
        if r["dead"]:
            return {"destination": destination, "ok": False, "attempts": attempt,
                    "seconds": t, "reason": r.get("detail") or "refused"}
        if r["retry"] == 0:
            if not commit:
                return {"destination": destination, "ok": True, "attempts": attempt,
                        "seconds": t}
            # a delivery counts only once the PACS commits it (PS3.4 Annex J)
            c = _commit_wait(job_id, destination, uids, attempt, dest.commitment_timeout_s,
                             last=policy.dead(attempt))
            if c["ok"]:
                return {"destination": destination, "ok": True, "attempts": attempt,
                        "seconds": t, "committed": c["committed"]}
            if c.get("dead") or policy.dead(attempt):
                return {"destination": destination, "ok": False, "attempts": attempt,
                        "seconds": t, "reason": f"not committed after {attempt} attempt(s): "
                                                f"{c['reason']}"}
        DBOS.sleep(policy.delay(attempt, key=f"{job_id}:{destination}"))
        attempt += 1


def _commit_wait(job_id: str, destination: str, uids: list[dict], attempt: int,
                 timeout_s: float, *, last: bool) -> dict:
    """Ask for commitment and wait durably for the report (the request and its results are
    rows; the wait is DBOS sleeps between status steps, so a restart resumes it)."""
    c = _commit(job_id, destination, uids, attempt)
    if c["outcome"] == "done":
        return {"ok": True, "committed": c["already"]}
    if c["outcome"] != "sent":
        return {"ok": False, "dead": c["outcome"] == "dead", "reason": c["detail"]}
    polls = 0
    while True:
        s = _commit_status(job_id, destination, c["transaction_uid"], timeout_s, last)
        if s["final"]:
            break
        DBOS.sleep(min(0.25 * 2 ** min(polls, 5), 5.0, max(timeout_s - s["age_s"], 0.05)))
        polls += 1
    if s["state"] == "committed":
        return {"ok": True, "committed": s["committed"] + c["already"]}
    return {"ok": False, "reason": s["detail"]}


@DBOS.step(name="hounsfield.export.commit")
def _commit(job_id: str, destination: str, uids: list[dict], attempt: int) -> dict:
    """Storage Commitment N-ACTION for what the destination stored and has not committed."""
    from hounsfield.pacs.commitment import request

    archive = engine.worker_archive()
    r = request(archive, destination, [u["sop_instance_uid"] for u in uids], job_id=job_id,
                attempt=attempt)
    if r.outcome != "done":
        update_job(archive, job_id, log_line=f"{destination}: attempt {attempt}: storage "
                                             f"commitment {r.outcome}: {r.detail}"[:1000])
    return {"outcome": r.outcome, "transaction_uid": r.transaction_uid, "detail": r.detail,
            "already": r.already}


@DBOS.step(name="hounsfield.export.commit_status")
def _commit_status(job_id: str, destination: str, transaction_uid: str,
                   timeout_s: float, last: bool = False) -> dict:
    """The request's state; past ``timeout_s`` without a report it ends as ``timeout``.  A
    final state is written to the job log: what was committed, what was not and why."""
    from hounsfield.pacs import commitment

    archive = engine.worker_archive()
    s = commitment.status(archive, transaction_uid)
    if not s["final"] and s["age_s"] >= timeout_s:
        s = commitment.expire(archive, transaction_uid)
    if s["final"]:
        failed = s["failed"]
        lost = "; ".join(f"{f['sop_instance_uid']} ({f['reason']})" for f in failed[:5])
        update_job(archive, job_id, log_line=(
            f"{destination}: storage commitment {transaction_uid}: {s['state']}, "
            f"{s['committed']} committed"
            + (f", {len(failed)} not committed"
               + ("" if last else ", sent again on the next attempt") + f": {lost}"
               if failed else "")
            + (f" ({s['detail']})" if s["state"] in ("timeout", "refused") else ""))[:2000])
    return s


def explain(archive, study_uid: str) -> list[str]:  # noqa: ANN001
    """The routing decision for a study, as text, without running or recording anything."""
    from hounsfield.deploy.selection import route

    if not study_uid.strip():
        raise InvalidInput("a Study Instance UID is required")
    rules, note = current_rules(archive.settings)
    return ([note] if note else []) + list(route(archive, study_uid, rules).log)
