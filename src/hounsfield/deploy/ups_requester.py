"""Hounsfield as UPS requester (IHE AIW-I Task Requester, and Task Performer of what it
requested): each AI job is mirrored as a workitem on an external UPS-RS manager
(``[ups] mirror_url``), so a hospital's workflow manager sees the AI work Hounsfield does on
its own triggers (stable studies, MPPS, people asking).

Per job, driven by :class:`UpsRequester.run_once` from the worker loop:
Create (``POST /workitems?{uid}``, SCHEDULED) → Change State IN PROGRESS with our Transaction
UID → Update with Procedure Step Progress Information as the job moves → Update with the
Unified Procedure Step Performed Procedure Sequence (Output Information Sequence: the job's
results, retrievable from us) and Change State COMPLETED — or an Update with the reason and
Change State CANCELED when the job fails.  The workitem and Transaction UIDs are derived from
the job id, and how far each mirror got is a :class:`~hounsfield.deploy.models.UpsMirror` row:
a restarted worker resumes; a 409 "exists already" on create or "already IN PROGRESS" on a
claim we made before a crash counts as done.  A manager that is down is retried with backoff
(attempts and the last error stay on the row).  Jobs a UPS workitem asked for are not
mirrored (their requester has the workitem already).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
from pydicom import Dataset
from sqlalchemy import and_, or_, select

from hounsfield.archive.models import utcnow
from hounsfield.deploy.models import AiJob, UpsMirror
from hounsfield.deploy.ups_performer import (DONE_STATES, FAILED_STATES, PROGRESS, _code,
                                             _now, _progress, _state, output_items)
from hounsfield.dicom.uids import derived_uid

log = logging.getLogger(__name__)

FINAL = ("COMPLETED", "CANCELED")
DICOM_JSON = "application/dicom+json"


class MirrorError(Exception):
    pass


class UpsRequester:
    def __init__(self, archive) -> None:  # noqa: ANN001
        self.archive = archive

    @property
    def settings(self):  # noqa: ANN201
        return self.archive.settings.ups

    def _client(self) -> httpx.Client:
        headers = {"Accept": DICOM_JSON}
        if self.settings.mirror_token:
            headers["Authorization"] = f"Bearer {self.settings.mirror_token.get_secret_value()}"
        return httpx.Client(base_url=self.settings.mirror_url.rstrip("/"), headers=headers,
                            timeout=self.settings.mirror_timeout_s)

    def run_once(self, limit: int = 50) -> int:
        """Advance every job's mirror that is not final yet; the number advanced."""
        if not self.settings.mirror_url:
            return 0
        with self.archive.session() as s:
            rows = s.execute(
                select(AiJob, UpsMirror).outerjoin(UpsMirror, UpsMirror.job_id == AiJob.id)
                .where(AiJob.trigger.in_(self.settings.mirror_triggers))
                .where(or_(UpsMirror.job_id.is_(None), and_(UpsMirror.state.not_in(FINAL))))
                .order_by(AiJob.created_at).limit(limit)).all()
            pairs = [(j, m) for j, m in rows]
            for j, m in pairs:
                s.expunge(j)
                if m is not None:
                    s.expunge(m)
        if not pairs:
            return 0
        n = 0
        with self._client() as client:
            for job, mirror in pairs:
                if mirror is not None and mirror.attempts and utcnow() < _aware(
                        mirror.updated_at) + timedelta(seconds=min(60, 2 ** mirror.attempts)):
                    continue  # backing off after a failure
                try:
                    n += self.sync(client, job, mirror)
                except (httpx.HTTPError, MirrorError) as exc:
                    self._failed(job.id, f"{type(exc).__name__}: {exc}")
        return n

    # -- one job ----------------------------------------------------------------------------

    def sync(self, client: httpx.Client, job: AiJob, m: UpsMirror | None) -> int:
        if m is None:
            uid = derived_uid("hounsfield:ups-mirror", job.id)
            tuid = derived_uid("hounsfield:ups-mirror-tuid", job.id)
            state, progress = "", None
            with self.archive.write_session() as s, s.begin():
                s.add(UpsMirror(job_id=job.id, workitem_uid=uid, transaction_uid=tuid,
                                state="", attempts=0, error=""))
        else:
            uid, tuid, state, progress = (m.workitem_uid, m.transaction_uid, m.state,
                                          m.progress)
        if state == "":
            r = client.post(f"/workitems?{uid}", content=_json([self.workitem(job, uid)]),
                            headers={"Content-Type": DICOM_JSON})
            self._check(r, "create", ok=(201,), done=(409,))
            state = self._save(job.id, "SCHEDULED")
        if state == "SCHEDULED":
            r = client.put(f"/workitems/{uid}/state", content=_json([_state("IN PROGRESS", tuid)]),
                           headers={"Content-Type": DICOM_JSON})
            self._check(r, "claim", ok=(200,), done=(409,))
            state = self._save(job.id, "IN PROGRESS")
        if job.state in DONE_STATES:
            item = Dataset()
            item.PerformedProcedureStepStartDateTime = job.created_at.strftime("%Y%m%d%H%M%S")
            item.PerformedProcedureStepEndDateTime = (job.finished_at.strftime("%Y%m%d%H%M%S")
                                                      if job.finished_at else _now())
            item.PerformedStationNameCodeSequence = [_code(
                "99HOUNSFIELD", self.station(), "Hounsfield AI")]
            item.OutputInformationSequence = output_items(self.archive, job)
            body = Dataset()
            body.UnifiedProcedureStepPerformedProcedureSequence = [item]
            body.ProcedureStepProgressInformationSequence = [_progress(100, "done")]
            self._update(client, uid, tuid, body)
            r = client.put(f"/workitems/{uid}/state", content=_json([_state("COMPLETED", tuid)]),
                           headers={"Content-Type": DICOM_JSON})
            self._check(r, "complete", ok=(200,))
            self._save(job.id, "COMPLETED", progress=100)
            return 1
        if job.state in FAILED_STATES:
            body = Dataset()
            body.ProcedureStepProgressInformationSequence = [_progress(
                progress or 0, "canceled", f"AI job {job.state}: {job.error or 'no reason'}")]
            self._update(client, uid, tuid, body)
            r = client.put(f"/workitems/{uid}/state", content=_json([_state("CANCELED", tuid)]),
                           headers={"Content-Type": DICOM_JSON})
            self._check(r, "cancel", ok=(200,))
            self._save(job.id, "CANCELED")
            return 1
        pct, text = PROGRESS.get(job.state, (0, job.state))
        if progress != pct:
            body = Dataset()
            body.ProcedureStepProgressInformationSequence = [_progress(pct, text)]
            self._update(client, uid, tuid, body)
            self._save(job.id, state, progress=pct)
            return 1
        return 0

    def station(self) -> str:
        return self.settings.station_ae or self.archive.settings.dicom.ae_title

    def workitem(self, job: AiJob, uid: str) -> dict:
        """The SCHEDULED workitem describing ``job`` (PS3.4 Table CC.2.5-3, N-CREATE)."""
        from hounsfield.archive.query import get_study
        from hounsfield.deploy.ups_performer import retrieve_base

        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.34.6.1"
        ds.SOPInstanceUID = uid
        with self.archive.session() as s:
            study = get_study(s, job.study_instance_uid)
            if study is not None:
                ds.PatientName = study.patient.patient_name
                ds.PatientID = study.patient.patient_id
                ds.AccessionNumber = study.accession_number
        ds.ProcedureStepState = "SCHEDULED"
        ds.ScheduledProcedureStepPriority = "MEDIUM"
        ds.ProcedureStepLabel = f"Hounsfield AI {job.rule}"[:64]
        ds.WorklistLabel = "HOUNSFIELD AI"
        ds.InputReadinessState = "READY"
        ds.ScheduledProcedureStepStartDateTime = job.created_at.strftime("%Y%m%d%H%M%S")
        ds.ScheduledWorkitemCodeSequence = [_code("DCM", "110004", "Computer Aided Detection")]
        ds.ScheduledStationNameCodeSequence = [_code("99HOUNSFIELD", self.station(),
                                                     "Hounsfield AI")]
        item = Dataset()
        item.TypeOfInstances = "DICOM"
        item.StudyInstanceUID = job.study_instance_uid
        item.SeriesInstanceUID = job.series_instance_uid or job.study_instance_uid
        item.ReferencedSOPSequence = []
        dimse = Dataset()
        dimse.RetrieveAETitle = self.archive.settings.dicom.ae_title
        item.DICOMRetrievalSequence = [dimse]
        wado = Dataset()
        wado.RetrieveURL = f"{retrieve_base(self.archive.settings)}/studies/" \
                           f"{job.study_instance_uid}"
        item.WADORSRetrievalSequence = [wado]
        ds.InputInformationSequence = [item]
        ds.ProcedureStepProgressInformationSequence = []
        return ds.to_json_dict()

    # -- helpers ----------------------------------------------------------------------------

    def _update(self, client: httpx.Client, uid: str, tuid: str, body: Dataset) -> None:
        r = client.post(f"/workitems/{uid}?{tuid}", content=_json([body.to_json_dict()]),
                        headers={"Content-Type": DICOM_JSON})
        self._check(r, "update", ok=(200,))

    @staticmethod
    def _check(r: httpx.Response, what: str, *, ok: tuple[int, ...],
               done: tuple[int, ...] = ()) -> None:
        if r.status_code in ok or r.status_code in done:
            return
        try:
            why = r.json().get("error", "")
        except Exception:  # noqa: BLE001 - another manager's error body
            why = r.text[:300]
        raise MirrorError(f"{what}: HTTP {r.status_code} {r.headers.get('warning', '')} {why}"
                          .strip())

    def _save(self, job_id: str, state: str, *, progress: int | None = None) -> str:
        with self.archive.write_session() as s, s.begin():
            m = s.get(UpsMirror, job_id)
            m.state = state
            if progress is not None:
                m.progress = progress
            m.attempts, m.error, m.updated_at = 0, "", utcnow()
        return state

    def _failed(self, job_id: str, why: str) -> None:
        log.warning("UPS mirror of job %s: %s", job_id, why)
        with self.archive.write_session() as s, s.begin():
            m = s.get(UpsMirror, job_id)
            if m is not None:
                m.attempts += 1
                m.error = why[:4000]
                m.updated_at = utcnow()


def _json(body: object) -> bytes:
    import json

    return json.dumps(body).encode()


def _aware(d):  # noqa: ANN001, ANN202
    from datetime import timezone

    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
