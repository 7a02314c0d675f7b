"""Hounsfield as performer of its own UPS worklist (IHE AI Workflow for Imaging: the Task
Manager that is also the Task Performer).

Each worker pass (:meth:`UpsPerformer.run_once`, from ``JobWorker._run``):

1. **Claim** every SCHEDULED, READY workitem we can do: its Scheduled Workitem Code Sequence
   names one of ``[ups] workitem_codes``, its Scheduled Station Name Code Sequence (if any)
   names us, its study is in the archive and has become stable, and a routing rule matches it.
   The claim is a Change State to IN PROGRESS with our Transaction UID — derived from the
   workitem UID, so a restarted worker still holds the lock — recorded with the performer in
   the same transaction; then the pipeline is fired (``Trigger(study, "ups",
   key="ups:<workitem>")``: the same key twice is one decision, and a study whose stable
   trigger already ran gets that same job).
2. **Advance** every workitem we hold: Progress Reports (Procedure Step Progress Information
   Sequence) as the job moves (queued 10 %, running 40 %, exporting 80 %); COMPLETED with the
   Unified Procedure Step Performed Procedure Sequence naming the result objects (Output
   Information Sequence: the job's result SOP instances, retrievable from our AE title and
   our WADO-RS URL); CANCELED with the job's error as Reason For Cancellation and the
   discontinuation code DCM 110513 when the job fails, or when a Request Cancellation arrived
   (the job is cancelled first).

Everything goes through :mod:`hounsfield.deploy.ups`, so subscribers see each step.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pydicom import Dataset
from sqlalchemy import select

from hounsfield.deploy import ups
from hounsfield.deploy.models import UpsWorkitem
from hounsfield.dicom.uids import derived_uid
from hounsfield.errors import HounsfieldError

log = logging.getLogger(__name__)

PERFORMER = "hounsfield"
ACTOR = "hounsfield-performer"
#: job state -> (percent, description) reported while it runs
PROGRESS = {"queued": (10, "AI job queued"), "running": (40, "AI model running"),
            "exporting": (80, "sending results to their destinations")}
DONE_STATES = ("done", "superseded")
FAILED_STATES = ("failed", "dead", "cancelled")
#: CID 9300 Procedure Discontinuation Reasons
DISCONTINUED = ("DCM", "110513", "Discontinued for unspecified reason")


def transaction_uid(workitem_uid: str) -> str:
    """Our lock on a workitem: the same after a restart, unknown to anyone else."""
    return derived_uid("hounsfield:ups-performer", workitem_uid)


def _code(scheme: str, val: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = val, scheme, meaning
    return c


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")


def _state(state: str, tuid: str) -> dict:
    ds = Dataset()
    ds.ProcedureStepState = state
    ds.TransactionUID = tuid
    return ds.to_json_dict()


def _progress(pct: int, text: str, reason: str = "") -> Dataset:
    item = Dataset()
    item.ProcedureStepProgress = pct
    item.ProcedureStepProgressDescription = text[:64]
    if reason:
        item.ReasonForCancellation = reason[:10240]
        item.ProcedureStepDiscontinuationReasonCodeSequence = [_code(*DISCONTINUED)]
        item.ProcedureStepCancellationDateTime = _now()
    return item


def retrieve_base(settings) -> str:  # noqa: ANN001
    """Our WADO-RS base URL as named in Output Information Sequence items."""
    http = settings.http
    return (settings.ups.retrieve_url or f"http://{http.host}:{http.port}/dicom-web").rstrip("/")


def output_items(archive, job) -> list[Dataset]:  # noqa: ANN001
    """Output Information Sequence items for an AI job: its result instances, one item per
    series, each retrievable by C-MOVE/C-GET from our AE title and by WADO-RS (PS3.3 Table
    10-3b Referenced Instances and Access Macro)."""
    by_series: dict[str, list[dict]] = {}
    for r in job.result_uids or []:
        by_series.setdefault(r["series_instance_uid"], []).append(r)
    items = []
    for series, objs in by_series.items():
        item = Dataset()
        item.TypeOfInstances = "DICOM"
        item.StudyInstanceUID = job.study_instance_uid
        item.SeriesInstanceUID = series
        refs = []
        for o in objs:
            ref = Dataset()
            ref.ReferencedSOPClassUID = o["sop_class_uid"]
            ref.ReferencedSOPInstanceUID = o["sop_instance_uid"]
            refs.append(ref)
        item.ReferencedSOPSequence = refs
        dimse = Dataset()
        dimse.RetrieveAETitle = archive.settings.dicom.ae_title
        item.DICOMRetrievalSequence = [dimse]
        wado = Dataset()
        wado.RetrieveURL = (f"{retrieve_base(archive.settings)}/studies/"
                            f"{job.study_instance_uid}/series/{series}")
        item.WADORSRetrievalSequence = [wado]
        items.append(item)
    return items


class UpsPerformer:
    """Claims, performs and reports workitems (see the module docstring).  Holds only a
    memory of workitems it decided not to claim (and why), to skip them until they change."""

    def __init__(self, archive) -> None:  # noqa: ANN001
        self.archive = archive
        self._skipped: dict[str, tuple] = {}

    @property
    def settings(self):  # noqa: ANN201
        return self.archive.settings.ups

    def station(self) -> str:
        return self.settings.station_ae or self.archive.settings.dicom.ae_title

    def run_once(self) -> tuple[int, int]:
        """One pass: (workitems claimed, workitems finished)."""
        if not self.settings.perform:
            return 0, 0
        claimed = finished = 0
        with self.archive.session() as s:
            rows = list(s.scalars(select(UpsWorkitem).where(
                UpsWorkitem.state.in_((ups.SCHEDULED, ups.IN_PROGRESS)))
                .order_by(UpsWorkitem.created_at)))
            for r in rows:
                s.expunge(r)
        for row in rows:
            try:
                if row.state == ups.SCHEDULED:
                    claimed += self._claim(row)
                elif row.performer == PERFORMER:
                    finished += self._advance(row)
            except Exception as exc:  # noqa: BLE001 - one workitem must not stop the others
                log.warning("UPS workitem %s: %s", row.uid, exc)
        return claimed, finished

    # -- claiming ---------------------------------------------------------------------------

    def why_not(self, row: UpsWorkitem) -> str:
        """'' if we can perform ``row``, else why not."""
        ds = row.dataset
        if ups.value(ds, "InputReadinessState", "READY") != "READY":
            return "its input is not READY"
        wanted = set(self.settings.workitem_codes)
        codes = [f"{ups.value(c, 'CodingSchemeDesignator')}:{ups.value(c, 'CodeValue')}"
                 for c in (ds.get(ups.tag("ScheduledWorkitemCodeSequence")) or {}).get(
                     "Value") or []]
        if not any(c in wanted for c in codes):
            return f"its workitem codes {codes} are none of ours"
        stations = [ups.value(c, "CodeValue") for c in (ds.get(ups.tag(
            "ScheduledStationNameCodeSequence")) or {}).get("Value") or []]
        if stations and self.station() not in stations:
            return f"it is scheduled on {stations}, not on {self.station()}"
        return ""

    def _stable_event(self, study: str) -> int | None:
        from hounsfield.ingest.models import StableEvent

        with self.archive.session() as s:
            return s.scalar(select(StableEvent.id).where(
                StableEvent.level == "STUDY", StableEvent.study_instance_uid == study)
                .order_by(StableEvent.id.desc()).limit(1))

    def _claim(self, row: UpsWorkitem) -> int:
        mark = (row.updated_at,)
        if self._skipped.get(row.uid) == mark:
            return 0
        why = self.why_not(row)
        if why:
            self._skipped[row.uid] = mark
            log.info("UPS workitem %s not ours: %s", row.uid, why)
            return 0
        study = row.study_instance_uid
        event = self._stable_event(study) if study else None
        if event is None:
            return 0  # the study is not here (or not complete) yet: look again next pass
        if self._skipped.get(row.uid) == (row.updated_at, event):
            return 0
        from hounsfield.deploy.pipeline import current_rules
        from hounsfield.deploy.selection import route

        rules, _note = current_rules(self.archive.settings)
        decision = route(self.archive, study, rules)
        if decision.rule is None:
            self._skipped[row.uid] = (row.updated_at, event)
            log.info("UPS workitem %s: no routing rule matches study %s", row.uid, study)
            return 0
        tuid = transaction_uid(row.uid)
        try:
            ups.change_state(self.archive, row.uid, _state(ups.IN_PROGRESS, tuid), actor=ACTOR,
                             performer=PERFORMER)
        except ups.UpsRefused as exc:  # another performer was faster
            log.info("UPS workitem %s not claimed: %s", row.uid, exc.reason)
            return 0
        start = Dataset()
        item = Dataset()
        item.PerformedProcedureStepStartDateTime = _now()
        item.PerformedStationNameCodeSequence = [_code("99HOUNSFIELD", self.station(),
                                                       "Hounsfield AI")]
        item.PerformedWorkitemCodeSequence = Dataset.from_json(row.dataset)\
            .ScheduledWorkitemCodeSequence
        item.OutputInformationSequence = []
        start.UnifiedProcedureStepPerformedProcedureSequence = [item]
        start.ProcedureStepProgressInformationSequence = [
            _progress(0, f"claimed by {self.station()} (rule {decision.rule})")]
        ups.update(self.archive, row.uid, start.to_json_dict(), transaction_uid=tuid,
                   actor=ACTOR)
        self._fire(ups.get_row(self.archive, row.uid))
        return 1

    def _fire(self, row: UpsWorkitem) -> str:
        from hounsfield.deploy.pipeline import Trigger, fire

        requester = row.created_by or "ups"
        try:
            fired = fire(self.archive, Trigger(row.study_instance_uid, "ups",
                                               key=f"ups:{row.uid}", actor=f"ups:{requester}"))
        except HounsfieldError as exc:
            self._cancel(row, f"the AI job could not start: {exc.reason}")
            return ""
        if fired.outcome not in ("job", "unchanged") or not fired.job_id:
            last = fired.log[-1] if fired.log else ""
            self._cancel(row, f"no AI job ({fired.outcome}): {last}")
            return ""
        ups.set_job(self.archive, row.uid, fired.job_id)
        return fired.job_id

    # -- performing -------------------------------------------------------------------------

    def _advance(self, row: UpsWorkitem) -> int:
        from hounsfield.deploy.jobs import cancel_job, get_job

        job_id = row.job_id or self._fire(row)
        if not job_id:
            return 1 if ups.get_row(self.archive, row.uid).state == ups.CANCELED else 0
        job = get_job(self.archive, job_id)
        if job.state in DONE_STATES:  # finished before a cancel request could stop it
            self._complete(row, job)
            return 1
        if row.cancel_requested:
            if job.state in PROGRESS:
                try:
                    cancel_job(self.archive, job.id, actor=ACTOR)
                except Exception as exc:  # noqa: BLE001 - the workitem is canceled regardless
                    log.warning("job %s could not be cancelled: %s", job.id, exc)
            self._cancel(row, row.cancel_reason or "cancellation requested")
            return 1
        if job.state in FAILED_STATES:
            self._cancel(row, f"AI job {job.id} {job.state}: {job.error or 'no reason given'}")
            return 1
        pct, text = PROGRESS.get(job.state, (0, job.state))
        if row.progress != pct:
            body = Dataset()
            body.ProcedureStepProgressInformationSequence = [_progress(pct, text)]
            ups.update(self.archive, row.uid, body.to_json_dict(),
                       transaction_uid=transaction_uid(row.uid), actor=ACTOR)
        return 0

    def _complete(self, row: UpsWorkitem, job) -> None:  # noqa: ANN001
        tuid = transaction_uid(row.uid)
        current = Dataset.from_json(row.dataset)
        performed = current.get("UnifiedProcedureStepPerformedProcedureSequence") or [Dataset()]
        item = performed[0]
        if "PerformedProcedureStepStartDateTime" not in item:
            item.PerformedProcedureStepStartDateTime = _now()
        item.PerformedProcedureStepEndDateTime = _now()
        item.OutputInformationSequence = output_items(self.archive, job)
        body = Dataset()
        body.UnifiedProcedureStepPerformedProcedureSequence = [item]
        n = job.n_findings if job.n_findings is not None else 0
        body.ProcedureStepProgressInformationSequence = [
            _progress(100, f"done: {n} finding(s), {len(job.result_uids or [])} object(s)")]
        ups.update(self.archive, row.uid, body.to_json_dict(), transaction_uid=tuid,
                   actor=ACTOR)
        ups.change_state(self.archive, row.uid, _state(ups.COMPLETED, tuid), actor=ACTOR)
        log.info("UPS workitem %s COMPLETED by job %s", row.uid, job.id)

    def _cancel(self, row: UpsWorkitem, reason: str) -> None:
        tuid = transaction_uid(row.uid)
        body = Dataset()
        body.ProcedureStepProgressInformationSequence = [
            _progress(row.progress or 0, "canceled", reason)]
        ups.update(self.archive, row.uid, body.to_json_dict(), transaction_uid=tuid,
                   actor=ACTOR)
        ups.change_state(self.archive, row.uid, _state(ups.CANCELED, tuid), actor=ACTOR)
        log.info("UPS workitem %s CANCELED: %s", row.uid, reason)
