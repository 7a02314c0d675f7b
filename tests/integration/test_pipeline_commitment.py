"""The pipeline with Storage Commitment (issue 17): ``hounsfield serve`` exports a job's SEG and
SR to Orthanc, whose profile asks for commitment; the job is done only once Orthanc has
committed them.  Orthanc loses the first SR it receives (its own Lua ``OnStoredInstance``
deletes it, as a PACS that fails to keep an object would), reports it as not committed
(0x0112), and the export workflow sends it again on the next attempt, where it is committed.
The job log says what was committed and what was not.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.dimse_peers import Orthanc, have
from tests.helpers import free_port
from tests.pipeline_helpers import Platform, demo_ct, open_archive, platform_config, wait_jobs

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("Orthanc"), reason="Orthanc not installed")]

LUA = """
lost = false
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] == 'SR' and not lost then
    lost = true
    Delete(instanceId)  -- the PACS loses the first SR it was sent
  end
end
"""


def test_job_done_only_after_commitment_and_lost_object_resent(tmp_path):
    hf_port = free_port()
    lua = tmp_path / "lose.lua"
    lua.write_text(LUA)
    orthanc = Orthanc(tmp_path / "orthanc",
                      modalities={"hounsfield": ("HOUNSFIELD", "127.0.0.1", hf_port)},
                      extra={"LuaScripts": [str(lua)]})
    orthanc.start()
    platform = None
    try:
        dest = {"pacs": {"kind": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1",
                         "port": orthanc.dicom_port, "profile": "ai-ready",
                         "storage_commitment": True, "commitment_timeout_s": 60,
                         "commitment_hold_s": 0.5,
                         "retry": {"initial_delay_s": 0.5, "max_attempts": 4}}}
        cfg = platform_config(tmp_path / "hf", destinations=dest, dicom_port=hf_port,
                              profile="ai-ready")
        platform = Platform(cfg).start()
        files, _case = demo_ct(tmp_path / "ct", seed=5, patient="COMMIT^ONE", nodules=1)
        orthanc.upload(files)
        study = orthanc.rest("/studies")[0]
        orthanc.rest("/modalities/hounsfield/store", {"Resources": [study], "Synchronous": True})

        jobs = wait_jobs(cfg, lambda js: any(j["state"] in ("done", "failed", "dead")
                                             for j in js), timeout=300)
        job = jobs[0]
        assert job["state"] == "done", (job, platform.text()[-3000:])
        log = "\n".join(job["log"])
        print(log)  # the job log, for the how-to
        results = {r["sop_instance_uid"] for r in job["results"]
                   if r["kind"].split("-")[0] in ("SEG", "SR")}
        (sr,) = [r["sop_instance_uid"] for r in job["results"] if r["kind"].startswith("SR")]
        # attempt 1: both stored, the SR not committed (Orthanc lost it); attempt 2: SR again
        assert "storage commitment" in log and "partial" in log, log
        assert f"{sr} (0x0112 no such object instance)" in log, log
        assert "pacs: attempt 2: 1 delivered, 1 already there" in log, log
        assert "done; delivered to pacs (2 committed)" in log, log
        # the results are in Orthanc now, both of them
        got = set()
        for iid in orthanc.rest("/instances"):
            got.add(orthanc.rest(f"/instances/{iid}/simplified-tags")["SOPInstanceUID"])
        assert results <= got

        from hounsfield.pacs.export import acknowledged
        from hounsfield.pacs.models import CommitmentRequest, Delivery

        archive = open_archive(cfg)
        try:
            assert acknowledged(archive, results, "pacs") == results
            with archive.session() as s:
                reqs = s.scalars(select(CommitmentRequest)
                                 .order_by(CommitmentRequest.id)).all()
                assert [r.state for r in reqs] == ["partial", "committed"], \
                    [(r.state, r.detail) for r in reqs]
                assert [r.n_instances for r in reqs] == [2, 1]
                assert all(r.job_id == job["id"] and r.report_via == "new" for r in reqs)
                commits = s.scalars(select(Delivery).where(Delivery.operation == "COMMIT")
                                    .order_by(Delivery.id)).all()
                assert [(c.sop_instance_uid == sr, c.status) for c in commits
                        if c.sop_instance_uid == sr] == [(True, 0x0112), (True, 0)]
        finally:
            archive.close()
    finally:
        if platform:
            rc = platform.stop()
            assert rc == 0, platform.text()[-3000:]
        orthanc.stop()


def test_never_committed_is_dead_after_the_last_attempt(tmp_path):
    """Orthanc knows our AE title at an address where nothing listens, so its commitment
    reports never arrive: each attempt times out (commitment_timeout_s), the objects are sent
    again, and after the last attempt the job is dead with the reason; the delivery log shows
    them stored but not acknowledged."""
    hf_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", modalities={
        "hounsfield": ("HOUNSFIELD", "127.0.0.1", free_port())})  # reports go nowhere
    orthanc.start()
    platform = None
    try:
        dest = {"pacs": {"kind": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1",
                         "port": orthanc.dicom_port, "profile": "ai-ready",
                         "storage_commitment": True, "commitment_timeout_s": 2,
                         "commitment_hold_s": 0.2,
                         "retry": {"initial_delay_s": 0.5, "max_attempts": 2}}}
        cfg = platform_config(tmp_path / "hf", destinations=dest, dicom_port=hf_port,
                              profile="ai-ready")
        platform = Platform(cfg).start()
        files, _case = demo_ct(tmp_path / "ct", seed=6, patient="COMMIT^TWO", nodules=1)
        from tests.dimse_peers import dcmtk

        res = dcmtk("storescu", "-aec", "HOUNSFIELD", "127.0.0.1", str(hf_port),
                    *map(str, files))
        assert res.returncode == 0, res.stderr
        jobs = wait_jobs(cfg, lambda js: any(j["state"] in ("done", "failed", "dead")
                                             for j in js), timeout=300)
        job = jobs[0]
        log = "\n".join(job["log"])
        print(log)
        assert job["state"] == "dead", (job, platform.text()[-3000:])
        assert "not committed after 2 attempt(s)" in job["error"], job["error"]
        assert "pacs: attempt 2: 2 delivered" in log, log  # sent again: not acknowledged
        assert log.count("timeout, 0 committed, 2 not committed") == 2, log
        assert "no N-EVENT-REPORT from ORTHANC within 2 s" in job["error"], job["error"]

        from hounsfield.pacs.export import acknowledged, stored

        results = {r["sop_instance_uid"] for r in job["results"]
                   if r["kind"].split("-")[0] in ("SEG", "SR")}
        archive = open_archive(cfg)
        try:
            assert stored(archive, results, "pacs") == results
            assert acknowledged(archive, results, "pacs") == set()
        finally:
            archive.close()
    finally:
        if platform:
            rc = platform.stop()
            assert rc == 0, platform.text()[-3000:]
        orthanc.stop()
