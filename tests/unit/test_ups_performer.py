"""The UPS performer's reporting on a real SQLite archive, with AI job rows in each state
(the engine is not needed: the performer reads job rows): progress while the job runs,
COMPLETED with the Output Information Sequence, CANCELED with the job's error or with the
reason of a cancel request; every step is an event report for a subscriber."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.config import load_settings
from hounsfield.deploy import ups
from hounsfield.deploy.models import AiJob, UpsEvent
from hounsfield.deploy.ups_performer import PERFORMER, UpsPerformer, transaction_uid
from tests.ups_helpers import state_body, workitem


@pytest.fixture()
def archive(tmp_path):  # noqa: ANN001
    a = Archive.open(load_settings(data_dir=tmp_path / "var", profile="demo"))
    yield a
    a.close()


def _held(archive, state: str = "queued", **job):  # noqa: ANN001, ANN003, ANN202
    """A workitem our performer holds, with its job in ``state``."""
    study = generate_uid()
    uid, ds = workitem(study)
    ups.create(archive, [ds], uid=uid)
    ups.subscribe(archive, uid, "WATCH")
    job_id = "job-" + uid[-12:]
    with archive.write_session() as s, s.begin():
        s.add(AiJob(id=job_id, idempotency_key=job_id, workflow_id=job_id,
                    study_instance_uid=study, trigger="ups", state=state, destinations=[],
                    log=[], result_uids=job.get("result_uids", []), findings=[], timings={},
                    error=job.get("error", ""), n_findings=job.get("n_findings")))
    ups.change_state(archive, uid, state_body("IN PROGRESS", transaction_uid(uid)),
                     performer=PERFORMER, job_id=job_id)
    return uid, job_id, study


def _set_job(archive, job_id: str, **values) -> None:  # noqa: ANN001, ANN003
    with archive.write_session() as s, s.begin():
        job = s.get(AiJob, job_id)
        for k, v in values.items():
            setattr(job, k, v)


def _events(archive, uid: str) -> list[tuple[int, object]]:  # noqa: ANN001
    with archive.session() as s:
        return [(e.event_type, ups.value(e.payload, "ProcedureStepState")
                 or ups.value(ups.value(e.payload, "ProcedureStepProgressInformationSequence",
                                        {}), "ProcedureStepProgress"))
                for e in s.scalars(select(UpsEvent).where(UpsEvent.workitem_uid == uid,
                                                          UpsEvent.ae_title == "WATCH")
                                   .order_by(UpsEvent.id))]


def test_progress_then_completed_with_outputs(archive):  # noqa: ANN001
    uid, job_id, study = _held(archive, "queued")
    performer = UpsPerformer(archive)
    performer.run_once()
    performer.run_once()  # unchanged progress is not reported twice
    _set_job(archive, job_id, state="running")
    performer.run_once()
    series = generate_uid()
    results = [{"kind": k, "sop_instance_uid": generate_uid(), "series_instance_uid": series,
                "sop_class_uid": c} for k, c in (("SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
                                                 ("SR", "1.2.840.10008.5.1.4.1.1.88.34"))]
    _set_job(archive, job_id, state="done", result_uids=results, n_findings=2)
    assert performer.run_once() == (0, 1)
    ds = ups.get(archive, uid)
    assert ups.value(ds, "ProcedureStepState") == "COMPLETED"
    performed = ups.value(ds, "UnifiedProcedureStepPerformedProcedureSequence")
    (item,) = performed[ups.tag("OutputInformationSequence")]["Value"]
    assert ups.value(item, "StudyInstanceUID") == study
    assert ups.value(item, "SeriesInstanceUID") == series
    refs = {ups.value(r, "ReferencedSOPInstanceUID") for r in
            item[ups.tag("ReferencedSOPSequence")]["Value"]}
    assert refs == {r["sop_instance_uid"] for r in results}
    url = ups.value(ups.value(item, "WADORSRetrievalSequence"), "RetrieveURL")
    assert url.endswith(f"/dicom-web/studies/{study}/series/{series}")
    assert ups.value(performed, "PerformedProcedureStepEndDateTime")
    assert _events(archive, uid) == [(1, "SCHEDULED"), (1, "IN PROGRESS"), (3, 10), (3, 40),
                                     (3, 100), (1, "COMPLETED")]
    assert performer.run_once() == (0, 0)  # final: nothing more


def test_failed_job_cancels_with_its_reason(archive):  # noqa: ANN001
    uid, job_id, _ = _held(archive, "running")
    _set_job(archive, job_id, state="dead", error="model file is corrupt")
    UpsPerformer(archive).run_once()
    ds = ups.get(archive, uid)
    assert ups.value(ds, "ProcedureStepState") == "CANCELED"
    progress = ups.value(ds, "ProcedureStepProgressInformationSequence")
    assert "model file is corrupt" in ups.value(progress, "ReasonForCancellation")
    code = ups.value(progress, "ProcedureStepDiscontinuationReasonCodeSequence")
    assert ups.value(code, "CodeValue") == "110513"
    assert _events(archive, uid)[-1] == (1, "CANCELED")


def test_cancel_request_is_honoured_and_a_finished_job_still_completes(archive):  # noqa: ANN001
    uid, job_id, _ = _held(archive, "failed")
    ups.request_cancel(archive, uid, [{"00741238": {"vr": "LT", "Value": ["wrong patient"]}}],
                       actor="ris")
    assert (2, None) in _events(archive, uid)  # Cancel Requested reported to subscribers
    UpsPerformer(archive).run_once()
    ds = ups.get(archive, uid)
    assert ups.value(ds, "ProcedureStepState") == "CANCELED"
    assert ups.value(ups.value(ds, "ProcedureStepProgressInformationSequence"),
                     "ReasonForCancellation") == "wrong patient"
    uid2, job2, _ = _held(archive, "done")
    ups.request_cancel(archive, uid2, actor="ris")
    UpsPerformer(archive).run_once()
    assert ups.value(ups.get(archive, uid2), "ProcedureStepState") == "COMPLETED"


def test_not_ours_stays_scheduled(archive):  # noqa: ANN001
    performer = UpsPerformer(archive)
    uid, ds = workitem(generate_uid(), codes=("DCM", "110005", "Interpretation"))
    ups.create(archive, [ds], uid=uid)
    row = ups.get_row(archive, uid)
    assert "none of ours" in performer.why_not(row)
    uid2, ds2 = workitem(generate_uid())
    ds2[ups.tag("ScheduledStationNameCodeSequence")] = {"vr": "SQ", "Value": [{
        "00080100": {"vr": "SH", "Value": ["OTHER_AI"]},
        "00080102": {"vr": "SH", "Value": ["99LOCAL"]},
        "00080104": {"vr": "LO", "Value": ["another AI"]}}]}
    ups.create(archive, [ds2], uid=uid2)
    assert "not on" in performer.why_not(ups.get_row(archive, uid2))
    uid3, ds3 = workitem(generate_uid())  # ours, but the study is not here
    ups.create(archive, [ds3], uid=uid3)
    assert performer.why_not(ups.get_row(archive, uid3)) == ""
    assert performer.run_once() == (0, 0)
    assert {ups.value(ups.get(archive, u), "ProcedureStepState")
            for u in (uid, uid2, uid3)} == {"SCHEDULED"}
