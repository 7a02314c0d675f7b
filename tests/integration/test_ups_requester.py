"""Hounsfield as UPS requester against a second Hounsfield instance acting as the external
UPS-RS manager (no other UPS-RS manager is installed here): a job is mirrored as a workitem
(created, claimed, progress, COMPLETED with outputs / CANCELED with the reason); a manager
that is down is retried with backoff; a requester that crashed after creating the workitem
resumes without creating it twice."""

from __future__ import annotations

import time

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.config import load_settings
from hounsfield.deploy.models import AiJob, UpsMirror
from hounsfield.deploy.ups_requester import UpsRequester
from tests.helpers import free_port
from tests.ups_helpers import UpsClient, tag_value
from tests.web_fixtures import admin_token, live  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _requester(tmp_path, url: str, token: str) -> Archive:  # noqa: ANN001
    return Archive.open(load_settings(data_dir=tmp_path / "var", profile="demo", ups={
        "mirror_url": url, "mirror_token": token}))


def _job(archive: Archive, job_id: str, state: str, **kw) -> None:  # noqa: ANN003
    with archive.write_session() as s, s.begin():
        job = s.get(AiJob, job_id)
        if job is None:
            s.add(AiJob(id=job_id, idempotency_key=job_id, workflow_id=job_id,
                        study_instance_uid=kw.pop("study"), trigger=kw.pop("trigger", "stable"),
                        state=state,
                        rule="chest-ct-nodules", destinations=[], log=[], findings=[],
                        timings={}, result_uids=kw.pop("result_uids", []), **kw))
        else:
            job.state = state
            for k, v in kw.items():
                setattr(job, k, v)


def _mirror(archive: Archive, job_id: str) -> UpsMirror:
    with archive.session() as s:
        m = s.scalars(select(UpsMirror).where(UpsMirror.job_id == job_id)).one()
        s.expunge(m)
        return m


def test_jobs_mirrored_on_an_external_manager(tmp_path, live, admin_token):  # noqa: ANN001, F811
    manager = UpsClient(live.dicomweb, admin_token)
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    archive = _requester(tmp_path, dead, admin_token)
    study, series = generate_uid(), generate_uid()
    results = [{"kind": "SEG", "sop_instance_uid": generate_uid(),
                "series_instance_uid": series, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4"}]
    try:
        _job(archive, "job-good", "running", study=study)
        _job(archive, "job-bad", "queued", study=generate_uid())
        _job(archive, "job-ups", "running", study=study, trigger="ups")  # not mirrored
        UpsRequester(archive).run_once()          # the manager is down
        m = _mirror(archive, "job-good")
        assert m.attempts == 1 and "ConnectError" in m.error and m.state == ""
        UpsRequester(archive).run_once()          # backing off: no second attempt yet
        assert _mirror(archive, "job-good").attempts == 1
    finally:
        archive.close()
    archive = _requester(tmp_path, live.dicomweb, admin_token)
    try:
        time.sleep(2.1)
        requester = UpsRequester(archive)
        requester.run_once()
        good = _mirror(archive, "job-good")
        assert good.state == "IN PROGRESS" and good.attempts == 0 and good.progress == 40
        got = manager.get(good.workitem_uid).json()[0]
        assert tag_value(got, "00741000") == "IN PROGRESS"
        assert tag_value(got, "00404021")["0020000D"]["Value"] == [study]
        # the manager knows it is ours: no one else can complete it
        assert manager.state(good.workitem_uid, "COMPLETED", generate_uid()).status_code == 400
        # a crash after the create: the row forgot it, the manager answers 409, no duplicate
        with archive.write_session() as s, s.begin():
            s.get(UpsMirror, "job-bad").state = ""
        requester.run_once()
        assert _mirror(archive, "job-bad").state == "IN PROGRESS"
        _job(archive, "job-good", "done", result_uids=results, n_findings=1)
        _job(archive, "job-bad", "dead", error="no series qualified: missing slice")
        requester.run_once()
        assert _mirror(archive, "job-good").state == "COMPLETED"
        assert _mirror(archive, "job-bad").state == "CANCELED"
        done = manager.get(good.workitem_uid).json()[0]
        assert tag_value(done, "00741000") == "COMPLETED"
        (item,) = tag_value(done, "00741216")["00404033"]["Value"]
        assert item["00081199"]["Value"][0]["00081155"]["Value"] == [
            results[0]["sop_instance_uid"]]
        bad = manager.get(_mirror(archive, "job-bad").workitem_uid).json()[0]
        assert tag_value(bad, "00741000") == "CANCELED"
        assert "missing slice" in tag_value(tag_value(bad, "00741002"), "00741238")
        found = manager.search(WorklistLabel="HOUNSFIELD AI").json()
        assert len([x for x in found if tag_value(x, "00404021")["0020000D"]["Value"] == [
            study]]) == 1                          # job-ups was not mirrored
        assert requester.run_once() == 0           # all final: nothing more to do
    finally:
        archive.close()
