"""``hounsfield run-ai`` and ``hounsfield jobs list|show|retry|cancel``: the clinical pipeline's
jobs from the terminal (the console's jobs page and /api/jobs do the same)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from hounsfield.cli.common import cli_actor, console, edge, state

jobs_app = typer.Typer(help="AI jobs of the clinical pipeline: list, show, retry, cancel.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("run-ai")(run_ai_cmd)
    app.add_typer(jobs_app, name="jobs")


def run_ai_cmd(
    ctx: typer.Context,
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until the job ends")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits")] = 900.0,
) -> None:
    """Route a study now (as if it had just become stable) and queue its AI job; a running
    worker (`hounsfield serve`) runs it.  Prints the routing decision."""
    from hounsfield.deploy.jobs import get_job, reconcile
    from hounsfield.deploy.pipeline import Trigger, fire

    with edge():
        archive = state(ctx).archive
        fired = fire(archive, Trigger(study_uid, "manual", actor=cli_actor()))
        for line in fired.log:
            console.print(f"  {line}")
        console.print(f"[bold]{fired.outcome}[/]" + (f" {fired.job_id}" if fired.job_id else ""))
        if not (wait and fired.job_id):
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = get_job(archive, fired.job_id)
            reconcile(archive, [job])
            job = get_job(archive, fired.job_id)
            if job.state not in ("queued", "running", "exporting"):
                break
            time.sleep(0.5)
        _show(job)
        if job.state != "done":
            raise typer.Exit(1)


@jobs_app.command("list")
def list_cmd(
    ctx: typer.Context,
    state_: Annotated[Optional[str], typer.Option("--state", help="e.g. failed,dead")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study Instance UID")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest jobs: state, study, model version, findings, error."""
    from hounsfield.deploy.jobs import job_dict, list_jobs, reconcile

    with edge():
        archive = state(ctx).archive
        reconcile(archive)
        rows = list_jobs(archive, state=state_, study_uid=study, limit=limit)
        if as_json:
            typer.echo(json.dumps([job_dict(j) for j in rows], indent=1))
            return
        t = Table("job", "state", "study", "rule", "model", "findings", "created", "error")
        for j in rows:
            t.add_row(j.id, j.state, j.study_instance_uid[-24:], j.rule, j.model_version,
                      "" if j.n_findings is None else str(j.n_findings),
                      j.created_at.strftime("%Y-%m-%d %H:%M:%S"), (j.error or "")[:60])
        console.print(t)


def _show(job) -> None:  # noqa: ANN001
    from hounsfield.deploy.jobs import job_dict

    d = job_dict(job)
    for k in ("id", "state", "study_instance_uid", "series_instance_uid", "trigger", "actor",
              "rule", "model", "model_version", "device_uid", "profile", "destinations",
              "attempts", "n_findings", "error", "superseded_by", "created_at", "finished_at"):
        console.print(f"[bold]{k}[/]: {d[k]}")
    if d["timings"]:
        console.print("[bold]timings[/]: " + ", ".join(f"{k} {v}" for k, v in d["timings"].items()))
    for r in d["results"]:
        console.print(f"  result {r['kind']}: {r['sop_instance_uid']}")
    console.print("[bold]log[/]:")
    for line in d["log"]:
        console.print(f"  {line}")


@jobs_app.command("show")
def show_cmd(ctx: typer.Context, job_id: Annotated[str, typer.Argument()],
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One job with its log (every routing and series decision), timings and results."""
    from hounsfield.deploy.jobs import get_job, job_dict, reconcile

    with edge():
        archive = state(ctx).archive
        reconcile(archive, [get_job(archive, job_id)])
        job = get_job(archive, job_id)
        if as_json:
            typer.echo(json.dumps(job_dict(job), indent=1))
        else:
            _show(job)


@jobs_app.command("retry")
def retry_cmd(ctx: typer.Context, job_id: Annotated[str, typer.Argument()]) -> None:
    """Re-queue a failed, dead or cancelled job."""
    from hounsfield.deploy.jobs import retry_job

    with edge():
        job = retry_job(state(ctx).archive, job_id, actor=cli_actor())
        console.print(f"{job.id} re-queued ({job.workflow_id})")


@jobs_app.command("cancel")
def cancel_cmd(ctx: typer.Context, job_id: Annotated[str, typer.Argument()]) -> None:
    """Cancel a queued or running job (a running step finishes; nothing after it runs)."""
    from hounsfield.deploy.jobs import cancel_job

    with edge():
        job = cancel_job(state(ctx).archive, job_id, actor=cli_actor())
        console.print(f"{job.id} cancelled")
