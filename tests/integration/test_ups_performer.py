"""Hounsfield as UPS performer and requester, end to end with real peers: ``hounsfield serve``
(a subprocess: DICOM node, web, job worker) receives two CT studies from dcmtk's storescu and
two workitems over plain HTTP asking for AI on them.  The good study's workitem goes
SCHEDULED → IN PROGRESS (our Transaction UID) → progress → COMPLETED with the result objects
in the Output Information Sequence (retrievable at the URL it names); the broken study's job
fails and its workitem is CANCELED with the reason.  A workitem for work we do not do stays
SCHEDULED.  A subscriber that was offline receives every event report afterwards over
WebSocket.  Each job is also mirrored on a second Hounsfield instance acting as the external
UPS-RS manager (``[ups] mirror_url``)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests
from pydicom.uid import generate_uid
from websockets.sync.client import connect

from tests.dimse_peers import PEER_ENV, have
from tests.pipeline_helpers import Platform, demo_ct, jobs_of, open_archive, platform_config
from tests.ups_helpers import GLOBAL, UpsClient, tag_value, workitem
from tests.web_fixtures import admin_token, live  # noqa: F401

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("storescu"), reason="dcmtk missing")]

STATE, EVENT, AFFECTED = "00741000", "00001002", "00001000"


def storescu(port: int, files) -> None:  # noqa: ANN001
    r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1",
                        str(port), *map(str, files)], env=PEER_ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _wait_final(ups: UpsClient, uids: list[str], timeout: float = 400) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    got: dict[str, dict] = {}
    while time.monotonic() < deadline:
        got = {u: ups.get(u).json()[0] for u in uids}
        if all(tag_value(d, STATE) in ("COMPLETED", "CANCELED") for d in got.values()):
            return got
        time.sleep(1)
    raise AssertionError(f"workitems never final: {[tag_value(d, STATE) for d in got.values()]}")


def _outputs(ds: dict) -> set[str]:
    performed = tag_value(ds, "00741216")
    out = set()
    for item in performed["00404033"].get("Value", []):
        for ref in item["00081199"]["Value"]:
            out.add(ref["00081155"]["Value"][0])
    return out


def test_performer_completes_and_cancels_and_mirrors(tmp_path, live, admin_token):  # noqa: ANN001, F811
    manager = UpsClient(live.dicomweb, admin_token)   # the external UPS-RS manager
    cfg = platform_config(tmp_path / "hf", extra=(
        f'\n[ups]\nmirror_url = "{live.dicomweb}"\nmirror_token = "{admin_token}"\n'))
    platform = Platform(cfg).start()
    try:
        from hounsfield.web.auth import issue_token

        archive = open_archive(cfg)
        try:
            token, _ = issue_token(archive, "demo", days=1)
        finally:
            archive.close()
        base = f"http://127.0.0.1:{platform.http_port}/dicom-web"
        ups = UpsClient(base, token)
        r = ups.subscribe(GLOBAL, "RIS")
        assert r.status_code == 201, r.text
        channel = r.headers["Content-Location"]

        good_study, bad_study = generate_uid(), generate_uid()
        good_uid, good = workitem(good_study, label="AI nodules")
        bad_uid, bad = workitem(bad_study, label="AI nodules (gap)")
        other_uid, other = workitem(good_study, codes=("DCM", "110005", "Interpretation"))
        for uid, ds in ((good_uid, good), (bad_uid, bad), (other_uid, other)):
            assert ups.create(uid, ds).status_code == 201
        files, _case = demo_ct(tmp_path / "good", seed=7, study_uid=good_study)
        storescu(platform.dicom_port, files)
        gap, _ = demo_ct(tmp_path / "gap", seed=21, patient="GAP^CT", study_uid=bad_study)
        storescu(platform.dicom_port, gap[:30] + gap[31:])

        final = _wait_final(ups, [good_uid, bad_uid])
        jobs = {j["study_instance_uid"]: j for j in jobs_of(cfg)}
        good_job, bad_job = jobs[good_study], jobs[bad_study]
        assert good_job["state"] == "done" and bad_job["state"] in ("failed", "dead")

        done = final[good_uid]
        assert tag_value(done, STATE) == "COMPLETED"
        results = {r["sop_instance_uid"] for r in good_job["results"]}
        assert results and _outputs(done) == results
        item = tag_value(done, "00741216")["00404033"]["Value"][0]
        assert item["0040E021"]["Value"][0]["00080054"]["Value"] == ["HOUNSFIELD"]
        url = item["0040E025"]["Value"][0]["00081190"]["Value"][0]
        r = requests.get(url + "/instances", headers=ups.h, timeout=30)
        assert r.status_code == 200
        assert {x["00080018"]["Value"][0] for x in r.json()} <= results
        assert tag_value(tag_value(done, "00741002"), "00741004") == 100

        canceled = final[bad_uid]
        assert tag_value(canceled, STATE) == "CANCELED"
        progress = tag_value(canceled, "00741002")
        reason = tag_value(progress, "00741238")
        assert bad_job["error"][:40] in reason, (reason, bad_job["error"])
        assert tag_value(progress, "0074100E")["00080100"]["Value"] == ["110513"]
        assert tag_value(ups.get(other_uid).json()[0], STATE) == "SCHEDULED"  # not ours

        # the subscriber was offline all along: every report waited for it
        seen = []
        with connect(channel, additional_headers={"Authorization": f"Bearer {token}"},
                     open_timeout=10) as ws:
            while True:
                try:
                    seen.append(json.loads(ws.recv(timeout=2)))
                except TimeoutError:
                    break
        states = [tag_value(e, STATE) for e in seen if tag_value(e, AFFECTED) == good_uid
                  and tag_value(e, EVENT) == 1]
        assert states == ["SCHEDULED", "IN PROGRESS", "COMPLETED"], states
        assert any(tag_value(e, EVENT) == 3 and tag_value(e, AFFECTED) == good_uid
                   for e in seen)
        assert [tag_value(e, STATE) for e in seen if tag_value(e, AFFECTED) == bad_uid
                and tag_value(e, EVENT) == 1][-1] == "CANCELED"

        # requester: the jobs Hounsfield ran on its own triggers, mirrored on the manager
        mirrored = [j for j in jobs.values() if j["trigger"] != "ups"]
        assert mirrored, [j["trigger"] for j in jobs.values()]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = manager.search(WorklistLabel="HOUNSFIELD AI")
            found = r.json() if r.status_code == 200 else []
            if len(found) == len(mirrored) and all(
                    tag_value(x, STATE) in ("COMPLETED", "CANCELED") for x in found):
                break
            time.sleep(1)
        by_study = {tag_value(x, "00404021")["0020000D"]["Value"][0]: x for x in found}
        for j in mirrored:
            x = by_study[j["study_instance_uid"]]
            if j["state"] == "done":
                assert tag_value(x, STATE) == "COMPLETED" and _outputs(x) == results
            else:
                assert tag_value(x, STATE) == "CANCELED"
                assert "AI job" in tag_value(tag_value(x, "00741002"), "00741238")
    finally:
        platform.stop()
