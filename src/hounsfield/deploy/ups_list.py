"""The worklist as people read it: the newest workitems for the console's Workitems page
(``/workitems``), ``/api/workitems`` and ``hounsfield ups list|show``.  The UPS-RS transactions
themselves are :mod:`hounsfield.deploy.ups`."""

from __future__ import annotations

from sqlalchemy import select

from hounsfield.deploy.models import UPS_STATES, UpsWorkitem
from hounsfield.deploy.ups import public, value
from hounsfield.errors import InvalidInput


def list_workitems(archive, *, state: str | None = None, study_uid: str | None = None,  # noqa: ANN001
                   limit: int = 200) -> list[UpsWorkitem]:
    """The newest workitems (detached rows), optionally of one state or study."""
    if state and state not in UPS_STATES:
        raise InvalidInput(f"unknown workitem state {state!r}: one of {', '.join(UPS_STATES)}")
    if not 1 <= limit <= 10_000:
        raise InvalidInput(f"limit must be 1..10000, got {limit}")
    q = select(UpsWorkitem).order_by(UpsWorkitem.created_at.desc(), UpsWorkitem.uid).limit(limit)
    if state:
        q = q.where(UpsWorkitem.state == state)
    if study_uid:
        q = q.where(UpsWorkitem.study_instance_uid == study_uid)
    with archive.session() as s:
        rows = list(s.scalars(q))
        for r in rows:
            s.expunge(r)
    return rows


def workitem_dict(row: UpsWorkitem, *, with_dataset: bool = False) -> dict:
    """A workitem's summary (what is asked, for which study, its state and our job); never
    the Transaction UID."""
    ds = row.dataset or {}
    code = value(ds, "ScheduledWorkitemCodeSequence") or [{}]
    first = code[0] if isinstance(code, list) and code and isinstance(code[0], dict) else {}
    out = {"uid": row.uid, "state": row.state, "study_instance_uid": row.study_instance_uid,
           "label": value(ds, "ProcedureStepLabel", "") or "",
           "priority": value(ds, "ScheduledProcedureStepPriority", "") or "",
           "patient_id": value(ds, "PatientID", "") or "",
           "workitem_code": " ".join(str(value(first, k, "") or "") for k in
                                     ("CodeValue", "CodingSchemeDesignator")).strip(),
           "workitem_meaning": value(first, "CodeMeaning", "") or "",
           "performer": row.performer, "job_id": row.job_id,
           "cancel_requested": row.cancel_requested, "cancel_reason": row.cancel_reason,
           "progress": row.progress, "created_by": row.created_by,
           "created_at": row.created_at.isoformat() if row.created_at else None,
           "updated_at": row.updated_at.isoformat() if row.updated_at else None}
    if with_dataset:
        out["dataset"] = public(ds)
    return out
