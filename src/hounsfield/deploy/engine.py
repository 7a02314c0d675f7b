"""Durable jobs on DBOS: the engine's process-wide state, queues, and the operator's verbs.

Why DBOS (measured, docs/howto/clinical-pipeline.md): it runs embedded on SQLite and scales out
on PostgreSQL with the same code; a workflow whose process is killed with -9 in the middle of a
step re-runs that step when a worker starts again (checked by tests/integration/
test_pipeline_faults.py), and its steps have retries with exponential backoff, workflow
timeouts, cancellation, resume and fork built in.  Huey (at-most-once) was dropped.

Roles: a *worker* process (``serve --role worker``, or inside ``serve``) launches DBOS: it
dequeues, runs and recovers workflows.  Every other process (API, DICOM node, CLI) talks to the
engine through a :class:`dbos.DBOSClient` on the same system database: it enqueues, cancels and
re-queues, never runs a job.

Queues: ``ai-jobs`` (inference; ``jobs.worker_concurrency`` per worker, default 1: one model
run at a time per machine), and one ``export-<destination>`` queue per destination whose global
concurrency is the destination's association limit.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from hounsfield.errors import ConfigurationError, NotFound

log = logging.getLogger(__name__)

APP_NAME = "hounsfield"
#: the version of our workflow definitions: DBOS recovers a crashed workflow only on the same
#: application version, so it is explicit (not DBOS's hash of the source) and changes only when
#: the steps of a workflow change incompatibly
WORKFLOW_VERSION = "hounsfield-jobs-1"
AI_QUEUE = "ai-jobs"

_lock = threading.Lock()
_client: Any = None
_client_url: str | None = None
_worker: Any = None  # the launched DBOS instance of this process, if it is a worker
_archive: Any = None  # the archive the worker's steps use
_stopping = threading.Event()


def system_database_url(settings) -> str:  # noqa: ANN001
    """The DBOS system database: ``jobs.database_url``, else ``<data_dir>/jobs.sqlite``, or
    the index's own PostgreSQL database (DBOS keeps to its ``dbos`` schema)."""
    if settings.jobs.database_url:
        return settings.jobs.database_url
    index = settings.index_url
    if index.startswith("postgresql"):
        return index.replace("postgresql+psycopg://", "postgresql://", 1)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(settings.data_dir) / 'jobs.sqlite'}"


def export_queue(destination: str) -> str:
    return f"export-{destination}"


def _config(settings) -> dict:  # noqa: ANN001
    return {"name": APP_NAME, "system_database_url": system_database_url(settings),
            "application_version": WORKFLOW_VERSION, "executor_id": settings.jobs.executor_id,
            "log_level": "WARNING", "notification_listener_polling_interval_sec": 0.2}


def launch_worker(archive) -> None:  # noqa: ANN001
    """Make this process a worker: launch DBOS (recovering this executor's unfinished
    workflows) and listen on the AI and export queues.  The workflows must be registered
    first: import :mod:`hounsfield.deploy.pipeline` (the worker component does)."""
    global _worker, _archive
    from dbos import DBOS

    with _lock:
        if _worker is not None:
            return
        settings = archive.settings
        _archive = archive
        inst = DBOS(config=_config(settings))
        try:
            DBOS.launch()
        except Exception as exc:
            DBOS.destroy()
            raise ConfigurationError(f"the job engine could not start: {exc}") from exc
        _register_queues(settings)
        _stopping.clear()
        _worker = inst
    log.info("job worker %s on %s", settings.jobs.executor_id, system_database_url(settings))


def _register_queues(settings) -> None:  # noqa: ANN001
    from dbos import DBOS

    poll = settings.jobs.poll_s
    DBOS.register_queue(AI_QUEUE, worker_concurrency=settings.jobs.worker_concurrency,
                        polling_interval_sec=poll, on_conflict="always_update")
    for name, dest in settings.export.destinations.items():
        DBOS.register_queue(export_queue(name), global_concurrency=dest.max_associations,
                            polling_interval_sec=poll, on_conflict="always_update")


def stop_worker() -> None:
    """Stop this process's worker; running workflows are left for recovery (never lost)."""
    global _worker, _archive
    from dbos import DBOS

    with _lock:
        if _worker is None:
            return
        _stopping.set()
        DBOS.destroy(workflow_completion_timeout_sec=0)
        _worker = None
        _archive = None


def stopping() -> bool:
    """True once this worker is shutting down: a step that fails now (its database or
    executor closing under it) must not record an outcome — see :func:`abandon`."""
    return _stopping.is_set()


def abandon() -> None:
    """Never return: the step in progress is left unrecorded, so the engine re-runs it when a
    worker starts again (as after kill -9).  ``serve`` exits the process without waiting for
    such threads."""
    threading.Event().wait()


def worker_archive():  # noqa: ANN201
    if _archive is None:
        raise ConfigurationError("not a job worker: the pipeline's steps run in a worker only")
    return _archive


def is_worker() -> bool:
    return _worker is not None


def client(settings):  # noqa: ANN001, ANN201
    """A DBOS client on the system database (enqueue, cancel, resume, fork, inspect)."""
    global _client, _client_url
    from dbos import DBOSClient

    url = system_database_url(settings)
    with _lock:
        if _client is None or _client_url != url:
            if _client is not None:
                _client.destroy()
            _migrate(url)
            _client = DBOSClient(system_database_url=url, application_name=APP_NAME)
            _client_url = url
        return _client


_migrated: set[str] = set()


def _migrate(url: str) -> None:
    """Create or upgrade the engine's tables (a process that only enqueues — the API, the
    DICOM node, the CLI — may be the first to touch a new data directory)."""
    from dbos import DBOS

    if url in _migrated:
        return
    try:
        DBOS.migrate(url)
    except Exception as exc:  # noqa: BLE001 - DBOS raises its own and driver errors
        raise ConfigurationError(f"the job engine's database {url} cannot be prepared: "
                                 f"{exc}") from exc
    _migrated.add(url)


def enqueue(settings, workflow: str, queue: str, workflow_id: str, *args: Any,  # noqa: ANN001
            timeout_s: float | None = None) -> str:
    """Enqueue ``workflow`` (its registered name) under ``workflow_id``; an existing workflow
    with that ID is returned, not duplicated (the idempotency key)."""
    opts: dict[str, Any] = {"workflow_name": workflow, "queue_name": queue,
                            "workflow_id": workflow_id, "app_version": WORKFLOW_VERSION,
                            "workflow_id_reuse_policy": "return-existing"}
    if timeout_s:
        opts["workflow_timeout"] = float(timeout_s)
    return client(settings).enqueue(opts, *args).get_workflow_id()


def status(settings, workflow_id: str):  # noqa: ANN001, ANN201
    """DBOS's status of a workflow (None when the engine does not know it)."""
    rows = client(settings).list_workflows(workflow_ids=[workflow_id], load_input=False,
                                           load_output=False)
    return rows[0] if rows else None


def statuses(settings, workflow_ids: list[str]) -> dict[str, Any]:  # noqa: ANN001
    if not workflow_ids:
        return {}
    rows = client(settings).list_workflows(workflow_ids=list(workflow_ids), load_input=False,
                                           load_output=True)  # the error, for dead jobs
    return {r.workflow_id: r for r in rows}


def cancel(settings, workflow_id: str) -> None:  # noqa: ANN001
    client(settings).cancel_workflow(workflow_id)


def requeue(settings, workflow_id: str) -> str:  # noqa: ANN001
    """Run a finished-badly workflow again: a cancelled one resumes where it stopped; a failed
    one (ERROR: DBOS never resumes those) is forked from its first step under a new ID."""
    st = status(settings, workflow_id)
    if st is None:
        raise NotFound(f"the job engine has no workflow {workflow_id}")
    c = client(settings)
    if st.status in ("CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
        c.resume_workflow(workflow_id, queue_name=st.queue_name or AI_QUEUE)
        return workflow_id
    return c.fork_workflow(workflow_id, 0, application_version=WORKFLOW_VERSION,
                           queue_name=st.queue_name or AI_QUEUE).get_workflow_id()
