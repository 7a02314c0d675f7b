"""The MPPS trigger on a whole platform (``hounsfield serve`` as a subprocess), with real peers:
pynetdicom as the modality's MPPS SCU (N-CREATE / N-SET) and dcmtk's storescu sending the
images.

- A COMPLETED MPPS starts the AI job within seconds, long before the quiet timer
  (``stable_after_s`` 45 s) would; when the timer fires later its decision is "unchanged" and
  no second job is made.
- Faults and bad input on one running platform: an MPPS for a study not in the archive whose
  images arrive afterwards; a DISCONTINUED procedure (recorded, never routed, the quiet timer
  holds it back too); a COMPLETED MPPS whose images never all arrive (flagged "mismatch" after
  ``[mpps] mismatch_wait_s`` with the missing UIDs, in the API, the console and the CLI, and
  routed when the rest arrives late); N-SET on a completed MPPS, on an unknown one, N-CREATE
  with missing attributes or the wrong state.  The server keeps serving after each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dimse_peers import PEER_ENV, have, wait_until
from tests.mpps_modality import Modality, create_attrs, final_mods, performed_series
from tests.pipeline_helpers import ROOT, Platform, demo_ct, jobs_of, open_archive, platform_config

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("storescu"), reason="dcmtk missing")]

NO_LONGER = "Performed Procedure Step Object may no longer be updated"


def storescu(port: int, files: list[Path]) -> None:
    r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1",
                        str(port), *map(str, files)],
                       env=PEER_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def route_events(cfg: Path, study: str) -> list[dict]:
    from sqlalchemy import select

    from hounsfield.deploy.models import RouteEvent

    archive = open_archive(cfg)
    try:
        with archive.session() as s:
            return [{"key": e.trigger_key, "trigger": e.trigger, "outcome": e.outcome,
                     "job_id": e.job_id, "actor": e.actor, "log": list(e.log)}
                    for e in s.scalars(select(RouteEvent)
                                       .where(RouteEvent.study_instance_uid == study)
                                       .order_by(RouteEvent.id))]
    finally:
        archive.close()


def steps(cfg: Path) -> dict[str, dict]:
    from hounsfield.ingest.mpps import list_mpps, mpps_dict

    archive = open_archive(cfg)
    try:
        return {r.sop_instance_uid: mpps_dict(r) for r in list_mpps(archive)}
    finally:
        archive.close()


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hounsfield.cli", "--config", str(cfg), *args],
                          env={**PEER_ENV, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
                          capture_output=True, text=True, timeout=120)


def study_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_mpps_completed_starts_the_job_before_the_quiet_timer(tmp_path):
    quiet = 45.0
    cfg = platform_config(tmp_path / "hf", stable_after_s=quiet)
    platform = Platform(cfg).start()
    try:
        files, _case = demo_ct(tmp_path / "ct", seed=31, patient="MPPS^TIMER")
        study = study_of(files)
        uid = generate_uid()
        with Modality(platform.dicom_port) as m:
            assert m.create(create_attrs(study), uid)[0] == 0  # the study is not here yet
            storescu(platform.dicom_port, files)
            assert m.set(uid, final_mods("COMPLETED", performed_series(files)))[0] == 0
            n_set = time.monotonic()
        # the property, not a timing: the MPPS trigger made the job while the quiet timer had
        # not fired (its route event comes later, "unchanged"); the seconds are printed only
        assert wait_until(lambda: jobs_of(cfg), timeout=quiet - 5, interval=0.2), \
            platform.text()[-3000:]
        created_s = time.monotonic() - n_set
        (job,) = jobs_of(cfg)
        assert (job["trigger"], job["actor"]) == ("mpps", "MODALITY")
        assert [e["trigger"] for e in route_events(cfg, study)] == ["mpps"]  # the timer: not yet
        assert wait_until(lambda: jobs_of(cfg)[0]["state"] != "queued", timeout=60,
                          interval=0.2)
        started_s = time.monotonic() - n_set
        print(f"MPPS trigger: job created {created_s:.2f} s, running {started_s:.2f} s after "
              f"the N-SET COMPLETED (quiet timer {quiet:g} s)")
        step = steps(cfg)[uid]
        assert (step["trigger_state"], step["route_outcome"], step["job_id"]) == \
            ("fired", "job", job["id"])

        assert wait_until(lambda: jobs_of(cfg)[0]["state"] in ("done", "failed", "dead"),
                          timeout=300, interval=0.5)
        assert jobs_of(cfg)[0]["state"] == "done", (jobs_of(cfg)[0], platform.text()[-3000:])
        # the quiet timer fires at last: the same content, model and profile -> unchanged.
        # The study's last instance is the job's last result object (stored in the study), so
        # the timer counts from then, not from the last image
        assert wait_until(lambda: len(route_events(cfg, study)) == 2, timeout=quiet + 30), \
            route_events(cfg, study)
        stable = route_events(cfg, study)[1]
        assert stable["trigger"] == "stable" and stable["outcome"] == "unchanged", stable
        assert stable["job_id"] == job["id"] and len(jobs_of(cfg)) == 1

        # what the console and the CLI show
        with httpx.Client(base_url=f"http://127.0.0.1:{platform.http_port}", timeout=30) as c:
            assert c.get("/api/mpps").status_code == 401
            assert c.post("/api/auth/login",
                          json={"username": "demo", "password": "demo"}).status_code == 200
            (got,) = c.get("/api/mpps").json()
            assert got["sop_instance_uid"] == uid and got["job_id"] == job["id"]
            page = c.get("/mpps")
            assert page.status_code == 200 and f'href="/jobs/{job["id"]}"' in page.text
        r = cli(cfg, "mpps", "list", "--json")
        assert r.returncode == 0, r.stderr
        assert [s["trigger_state"] for s in json.loads(r.stdout)] == ["fired"]
    finally:
        rc = platform.stop()
        assert rc == 0, platform.text()[-3000:]


def test_mpps_faults_and_bad_input_on_a_running_platform(tmp_path):
    wait_s = 10.0
    cfg = platform_config(tmp_path / "hf", stable_after_s=3.0,
                          extra=f"\n[mpps]\nmismatch_wait_s = {wait_s}\n")
    platform = Platform(cfg).start()
    port = platform.dicom_port
    try:
        # -- mismatch: 8 slices announced, 4 sent (set up first: its clock runs meanwhile) -----
        mism, _ = demo_ct(tmp_path / "mismatch", seed=43, patient="MPPS^MISMATCH")
        mism = mism[:8]
        m_uid = generate_uid()
        storescu(port, mism[:4])
        with Modality(port) as m:
            assert m.create(create_attrs(study_of(mism)), m_uid)[0] == 0
            assert m.set(m_uid, final_mods("COMPLETED", performed_series(mism)))[0] == 0
        m_set = time.monotonic()
        assert steps(cfg)[m_uid]["trigger_state"] == "waiting"

        # -- an MPPS for a study not in the archive; its images come afterwards -------------
        early, _ = demo_ct(tmp_path / "early", seed=41, patient="MPPS^EARLY")
        early = early[:6]  # too few slices for the chest rule: routed, no job
        e_study, e_uid = study_of(early), generate_uid()
        with Modality(port) as m:
            assert m.create(create_attrs(e_study), e_uid)[0] == 0
            assert m.set(e_uid, final_mods("COMPLETED", performed_series(early)))[0] == 0
        time.sleep(1.0)
        assert steps(cfg)[e_uid]["trigger_state"] == "waiting"
        assert route_events(cfg, e_study) == []
        storescu(port, early)
        assert wait_until(lambda: steps(cfg)[e_uid]["trigger_state"] == "fired", timeout=20)
        assert steps(cfg)[e_uid]["route_outcome"] == "no-rule"
        assert any(e["key"] == f"mpps:{e_uid}" and e["outcome"] == "no-rule"
                   for e in route_events(cfg, e_study))

        # -- DISCONTINUED: recorded, never routed, and the quiet timer holds it back --------
        stopped, _ = demo_ct(tmp_path / "stopped", seed=42, patient="MPPS^STOPPED")
        d_study, d_uid = study_of(stopped), generate_uid()
        with Modality(port) as m:
            assert m.create(create_attrs(d_study), d_uid)[0] == 0
            storescu(port, stopped)  # a whole chest CT: the rule would match
            assert m.set(d_uid, final_mods("DISCONTINUED", performed_series(stopped)))[0] == 0
        assert wait_until(lambda: route_events(cfg, d_study), timeout=30)
        (held,) = route_events(cfg, d_study)
        assert (held["trigger"], held["outcome"], held["job_id"]) == ("stable", "discontinued", "")
        assert steps(cfg)[d_uid]["trigger_state"] == "discontinued"
        time.sleep(2.0)
        assert jobs_of(cfg, d_study) == []

        # -- bad input, answered with the standard's statuses; the node keeps serving --------
        with Modality(port) as m:
            assert m.set(e_uid, final_mods("COMPLETED", performed_series(early))) == \
                (0x0110, NO_LONGER, 0xA710)
            assert m.echo() == 0
            assert m.set(d_uid, final_mods("IN PROGRESS")) == (0x0110, NO_LONGER, 0xA710)
            code, comment, _ = m.set(generate_uid(), final_mods("COMPLETED"))
            assert code == 0x0112 and "no MPPS" in comment
            assert m.echo() == 0
            attrs = create_attrs(generate_uid())
            del attrs.PerformedProcedureStepStartDate
            code, comment, _ = m.create(attrs, generate_uid())
            assert code == 0x0120 and "PerformedProcedureStepStartDate" in comment
            code, comment, _ = m.create(create_attrs(generate_uid(), state="COMPLETED"),
                                        generate_uid())
            assert code == 0x0106 and "IN PROGRESS" in comment
            assert m.create(create_attrs(e_study), e_uid)[0] == 0x0111
            assert m.echo() == 0
        assert len(steps(cfg)) == 3  # nothing of the refused requests was kept

        # -- the mismatch surfaces after the wait, with the missing UIDs --------------------
        assert wait_until(lambda: steps(cfg)[m_uid]["trigger_state"] == "mismatch",
                          timeout=wait_s + 20)
        assert time.monotonic() - m_set >= wait_s
        missing = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in mism[4:]]
        step = steps(cfg)[m_uid]
        assert step["n_missing"] == 4 and step["missing"] == missing
        with httpx.Client(base_url=f"http://127.0.0.1:{platform.http_port}", timeout=30) as c:
            assert c.post("/api/auth/login",
                          json={"username": "demo", "password": "demo"}).status_code == 200
            got = c.get("/api/mpps", params={"trigger_state": "mismatch"}).json()
            assert [g["sop_instance_uid"] for g in got] == [m_uid] and got[0]["n_missing"] == 4
            page = c.get("/mpps").text
            assert "4 missing" in page and "mismatch-summary" in page
        r = cli(cfg, "mpps", "list", "--trigger-state", "mismatch", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)[0]["missing"] == missing, r.stderr
        # the rest arrives late: routed then
        storescu(port, mism[4:])
        assert wait_until(lambda: steps(cfg)[m_uid]["trigger_state"] == "fired", timeout=20)
        assert steps(cfg)[m_uid]["missing"] == []
        assert jobs_of(cfg) == []  # neither small series matched the chest rule
        assert "Traceback" not in platform.text()
    finally:
        rc = platform.stop()
        assert rc == 0, platform.text()[-3000:]


def test_an_acknowledged_mpps_survives_kill_9(tmp_path):
    """N-CREATE and N-SET COMPLETED acknowledged, then the server is killed with -9 before any
    image arrived: after the restart the step is still there, waiting, and its images route it."""
    cfg = platform_config(tmp_path / "hf", stable_after_s=3.0)
    platform = Platform(cfg).start()
    try:
        files, _ = demo_ct(tmp_path / "ct", seed=51, patient="MPPS^KILL")
        files = files[:6]
        uid = generate_uid()
        with Modality(platform.dicom_port) as m:
            assert m.create(create_attrs(study_of(files)), uid)[0] == 0
            assert m.set(uid, final_mods("COMPLETED", performed_series(files)))[0] == 0
        platform.kill9()
        platform = Platform(cfg, log=tmp_path / "serve2.log").start()
        step = steps(cfg)[uid]
        assert (step["state"], step["trigger_state"], step["n_referenced"]) == \
            ("COMPLETED", "waiting", 6)
        storescu(platform.dicom_port, files)
        assert wait_until(lambda: steps(cfg)[uid]["trigger_state"] == "fired", timeout=30), \
            platform.text()[-3000:]
        assert steps(cfg)[uid]["route_outcome"] == "no-rule"
    finally:
        rc = platform.stop()
        assert rc == 0, platform.text()[-3000:]
