"""Superseded results: what a re-run tells the PACS about the results it replaces.

A job replaces the study's earlier finished jobs of the same rule (:func:`~hounsfield.deploy.
jobs.supersede_older`, at the end of the new job).  Two things follow, per destination and its
profile's ``supersede`` (:func:`hounsfield.pacs.profiles.effective`):

* always, where the standard has a place for it: the new objects name their predecessors —
  the new SR's Predecessor Documents Sequence lists the old SR(s) (:func:`predecessor_refs`,
  passed to :func:`hounsfield.results.build_results` by the run step);
* ``supersede = "iocm"``: an IHE IOCM rejection note — a KOS titled (113001, DCM, "Rejected for
  Quality Reasons") listing the old objects *that destination acknowledged* — is built, stored
  in our archive and exported to it after the new results were delivered
  (:func:`rejection_for`, then the ordinary export workflow).  Its UIDs are derived from the
  new job and the withdrawn objects, so a retried step builds the same note and the delivery
  log skips what was already acknowledged.

``supersede = "version"`` destinations get no note: the old objects stay, and the new SR says
which report it replaces.
"""

from __future__ import annotations

import io
import logging

from sqlalchemy import select

from hounsfield.deploy.models import AiJob

log = logging.getLogger(__name__)

#: the ``kind`` of a rejection note in a job's ``result_uids``
REJECTION = "REJECTION"


def replaced_jobs(archive, job: AiJob) -> list[AiJob]:  # noqa: ANN001
    """The earlier jobs ``job`` replaces: the study's finished jobs of the same rule created
    before it (still "done", or already marked superseded by it), oldest first."""
    with archive.session() as s:
        rows = list(s.scalars(select(AiJob).where(
            AiJob.study_instance_uid == job.study_instance_uid, AiJob.rule == job.rule,
            AiJob.id != job.id, AiJob.created_at < job.created_at,
            (AiJob.state == "done") | ((AiJob.state == "superseded")
                                       & (AiJob.superseded_by == job.id)))
            .order_by(AiJob.created_at)))
        for r in rows:
            s.expunge(r)
    return rows


def predecessor_refs(archive, job: AiJob) -> list[dict]:  # noqa: ANN001
    """The result references of the jobs ``job`` replaces (their own rejection notes left
    out), each with its study: what the new objects name as predecessors."""
    out = []
    for old in replaced_jobs(archive, job):
        for r in old.result_uids or []:
            if r.get("kind") != REJECTION:
                out.append({**r, "study_instance_uid": old.study_instance_uid})
    return out


def _model(job: AiJob):  # noqa: ANN202
    from hounsfield import __version__
    from hounsfield.results import AIModel

    name, _, version = job.model_version.partition("@")
    return AIModel(name=name, version=version, device_uid=job.device_uid,
                   software_version=__version__)


def _read_headers(archive, uids: list[str]) -> list:  # noqa: ANN001
    """The archived data sets of ``uids`` without pixel data (what a rejection note reads)."""
    import pydicom

    from hounsfield.archive.models import Instance

    with archive.session() as s:
        rows = dict(s.execute(select(Instance.sop_instance_uid, Instance.blob_key)
                              .where(Instance.sop_instance_uid.in_(uids))).all())
    return [pydicom.dcmread(io.BytesIO(archive.blobs.read(rows[u])), stop_before_pixels=True)
            for u in uids if u in rows]


def rejection_for(archive, job: AiJob, destination: str) -> dict | None:  # noqa: ANN001
    """Build and store the rejection note of the replaced jobs' objects that ``destination``
    acknowledged; the note's result reference (with ``rejects``: the withdrawn SOP instance
    UIDs) or None when there is nothing to withdraw there or the destination's profile says
    ``supersede = "version"``."""
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances
    from hounsfield.pacs.export import acknowledged
    from hounsfield.pacs.profiles import effective
    from hounsfield.results.kos import build_rejection_note

    if effective(archive.settings, destination).supersede != "iocm":
        return None
    mine = {r["sop_instance_uid"] for r in job.result_uids or []}
    old = [r["sop_instance_uid"] for r in predecessor_refs(archive, job)
           if r["sop_instance_uid"] not in mine]
    if not old:
        return None
    acked = acknowledged(archive, old, destination)
    withdraw = [u for u in old if u in acked]
    if not withdraw:
        return None
    headers = _read_headers(archive, withdraw)
    missing = sorted(set(withdraw) - {str(d.SOPInstanceUID) for d in headers})
    if missing:
        log.warning("job %s: %d superseded object(s) no longer archived, not in the rejection "
                    "note: %s", job.id, len(missing), ", ".join(missing[:3]))
    if not headers:
        return None
    from datetime import timezone

    when = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=timezone.utc)
    note = build_rejection_note(headers, _model(job), input_key=job.idempotency_key, when=when,
                                reason=f"superseded by job {job.id}")
    buf = io.BytesIO()
    note.save_as(buf, enforce_file_format=True)
    (outcome,) = store_instances(archive, [parse_part10(buf.getvalue())], source=f"ai:{job.id}")
    if outcome.status not in ("stored", "duplicate"):
        raise RuntimeError(f"storing the rejection note failed: {outcome.status} "
                           f"{outcome.reason}")
    return {"kind": REJECTION, "sop_instance_uid": str(note.SOPInstanceUID),
            "series_instance_uid": str(note.SeriesInstanceUID),
            "sop_class_uid": str(note.SOPClassUID), "destination": destination,
            "rejects": sorted(str(d.SOPInstanceUID) for d in headers)}
