"""The clinical pipeline under faults, each with real peers: ``hounsfield serve`` subprocesses
(whole, or its DICOM and worker roles apart so one can be killed), dcmtk's storescu as the
modality and storescp / Orthanc as the PACS.

PACS down during export; a worker killed with -9 in the middle of a job; the job database
(PostgreSQL) restarted; a model file missing or corrupt; a study that matches no rule; broken
series (missing slice, mixed orientations); the same study sent twice; new instances after a
job ran; many studies at once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.dimse_peers import PEER_ENV, Orthanc, have
from tests.helpers import free_port, wait_port
from tests.pipeline_helpers import (Platform, demo_ct, jobs_of, open_archive, platform_config,
                                    wait_jobs)

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("storescu", "storescp"), reason="dcmtk missing")]

FAST_RETRY = {"initial_delay_s": 0.5, "factor": 2.0, "max_delay_s": 2.0, "max_attempts": 200}


def storescu(port: int, files: list[Path]) -> None:
    r = subprocess.run(["storescu", "-R", "-aet", "MODALITY", "-aec", "HOUNSFIELD",
                        "127.0.0.1", str(port), *map(str, files)],
                       env=PEER_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


class StoreSCP:
    """dcmtk's storescp as a PACS that keeps every file it receives (one per instance)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["storescp", "--accept-all", "-od", str(self.folder),
                                      "-aet", "PACS", "+B", str(self.port)], env=PEER_ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def received(self) -> list[str]:
        """SOP Instance UIDs received, with repeats (storescp names files by them)."""
        out = []
        for f in self.folder.iterdir():
            if f.is_file():
                out.append(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
        return out


def _dest(port: int, **kw) -> dict:
    return {"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
            "profile": "all", "retry": dict(FAST_RETRY), **kw}


def _results(job: dict) -> set[str]:
    return {r["sop_instance_uid"] for r in job["results"]}


def test_pacs_down_during_export_then_back(tmp_path):
    """Orthanc is stopped before the results are ready; the job keeps retrying with backoff
    and, once Orthanc is back on its port, delivers everything once."""
    if not have("Orthanc"):
        pytest.skip("Orthanc not installed")
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    port = orthanc.dicom_port
    orthanc.stop()  # down from the start of the export (it comes back on the same port)
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(port, ae_title="ORTHANC")})
    platform = Platform(cfg).start()
    try:
        files, _case = demo_ct(tmp_path / "ct", seed=3)
        storescu(platform.dicom_port, files)
        jobs = wait_jobs(cfg, lambda js: js and any("to retry" in line for line in js[0]["log"]))
        assert jobs[0]["state"] == "exporting"
        time.sleep(3)  # a few more failed attempts while the PACS is down
        orthanc.start()  # same ports, same storage
        jobs = wait_jobs(cfg, lambda js: js[0]["state"] in ("done", "dead", "failed"))
        job = jobs[0]
        assert job["state"] == "done", job
        sops = _results(job)
        got = orthanc.rest("/instances")
        assert len(got) == len(sops)  # every result once, nothing twice
        tries = [line for line in job["log"] if "attempt" in line]
        assert len(tries) >= 3, job["log"]
    finally:
        platform.stop()
        orthanc.stop()


def test_worker_killed_mid_job_resumes_and_delivers_once(tmp_path):
    """The DICOM node and the worker run apart; the worker is killed with -9 while the job is
    running; a new worker (same executor) resumes it; the PACS gets each result once."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(pacs.port)})
    node = Platform(cfg, role="dicom").start()
    worker = Platform(cfg, role="worker").start()
    try:
        files, _case = demo_ct(tmp_path / "ct", seed=5)
        storescu(node.dicom_port, files)
        wait_jobs(cfg, lambda js: js and any("inference attempt 1" in x for x in js[0]["log"]),
                  timeout=120, interval=0.05)
        worker.kill9()
        assert jobs_of(cfg)[0]["state"] == "running"
        worker = Platform(cfg, role="worker", log=tmp_path / "worker2.log").start()
        jobs = wait_jobs(cfg, lambda js: js[0]["state"] in ("done", "dead", "failed"))
        job = jobs[0]
        assert job["state"] == "done", (job, worker.text()[-3000:])
        assert job["attempts"] == 2, job["log"]  # the inference step ran again
        assert any("inference attempt 2" in x for x in job["log"])
        received = pacs.received()
        assert sorted(received) == sorted(_results(job))  # once each
    finally:
        worker.stop()
        node.stop()
        pacs.stop()


def test_same_study_twice_and_new_instances(tmp_path):
    """Sent twice: one job, one set of results.  A new series in the study (not chosen):
    the routing says unchanged, no new job.  A new slice in the chosen series: a new job
    whose results supersede the old ones."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(pacs.port)})
    platform = Platform(cfg).start()
    try:
        files, case = demo_ct(tmp_path / "ct", seed=8)
        storescu(platform.dicom_port, files[:-1])  # the last slice comes later
        first = wait_jobs(cfg, lambda js: js and js[0]["state"] == "done")[0]
        storescu(platform.dicom_port, files[:-1])  # the same study again
        time.sleep(4)
        assert [j["id"] for j in jobs_of(cfg)] == [first["id"]]
        # a thick reformat series arrives: not chosen, so the input did not change
        reformat = _thick_reformat(case, tmp_path / "reformat")
        storescu(platform.dicom_port, reformat)
        time.sleep(4)
        assert [j["id"] for j in jobs_of(cfg)] == [first["id"]]
        archive = open_archive(cfg)
        try:
            from sqlalchemy import select

            from hounsfield.deploy.models import RouteEvent

            with archive.session() as s:
                outcomes = [r.outcome for r in s.scalars(select(RouteEvent).where(
                    RouteEvent.study_instance_uid == first["study_instance_uid"]))]
        finally:
            archive.close()
        assert outcomes.count("job") == 1 and "unchanged" in outcomes, outcomes
        # the missing slice arrives: the chosen series changed -> re-run, old superseded
        storescu(platform.dicom_port, files[-1:])
        jobs = wait_jobs(cfg, lambda js: len(js) == 2 and js[0]["state"] == "done")
        new, old = jobs
        assert old["state"] == "superseded" and old["superseded_by"] == new["id"]
        assert _results(new).isdisjoint(_results(old))
        assert sorted(pacs.received()) == sorted(_results(new) | _results(old))
    finally:
        platform.stop()
        pacs.stop()


def copies_of_ct(tmp: Path, n: int) -> list[list[Path]]:
    """``n`` different studies (new patient, study, series and SOP UIDs) of one small
    synthetic chest CT (48 x 128 x 128 at 0.7 mm pixels: a 9 cm field of view, so that the
    model's work per study is small — the test is about 50 arriving together, not the model)."""
    from pydicom.uid import generate_uid

    from hounsfield.synth import generate_ct

    ct = generate_ct("jingdong", 77, shape=(48, 128, 128), nodules=2, detail=0.5)
    out = []
    for k in range(n):
        folder = tmp / f"study{k:02d}"
        folder.mkdir(parents=True)
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        files = []
        for i, src in enumerate(ct.datasets):
            ds = src.copy()
            ds.PatientID, ds.PatientName = f"MANY{k:02d}", f"MANY^{k:02d}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame
            ds.SOPInstanceUID = generate_uid()
            ds.PixelSpacing = [0.7, 0.7]
            p = folder / f"{i:03d}.dcm"
            ds.save_as(p, enforce_file_format=True)
            files.append(p)
        out.append(files)
    return out


def _thick_reformat(case, folder: Path) -> list[Path]:  # noqa: ANN001
    """Every 4th slice of the CT as a 'derived 5 mm reformat' series of the same study."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    out = []
    for i, src in enumerate(case.ct.datasets[::4]):
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesNumber = 5
        ds.SeriesDescription = "5 mm MPR"
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        ds.SliceThickness = 5.0
        p = folder / f"r{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def test_no_rule_broken_series_and_broken_model(tmp_path):
    """An MR study matches no rule (recorded, no job); a CT with a missing slice and one with
    mixed orientations fail with that reason and send nothing; a missing and a corrupt model
    file fail the job with the reason, nothing sent."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(pacs.port)})
    platform = Platform(cfg).start()
    try:
        from tests.helpers import corpus

        storescu(platform.dicom_port, [corpus("MR_small.dcm")])
        files, case = demo_ct(tmp_path / "gap", seed=21, patient="GAP^CT")
        storescu(platform.dicom_port, files[:30] + files[31:])
        files2, _ = demo_ct(tmp_path / "mixed", seed=22, patient="MIXED^CT")
        for i, f in enumerate(files2[:10]):  # ten slices of a sagittal stack in the series
            ds = pydicom.dcmread(f)
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [-60.0 + 3.0 * i, -120.0, 80.0]
            ds.save_as(f)
        storescu(platform.dicom_port, files2)
        jobs = wait_jobs(cfg, lambda js: len(js) == 2 and all(
            j["state"] in ("failed", "dead") for j in js))
        reasons = " | ".join(j["error"] for j in jobs)
        assert "missing slice" in reasons or "gap" in reasons, reasons
        assert "orientation" in reasons, reasons
        archive = open_archive(cfg)
        try:
            from sqlalchemy import select

            from hounsfield.deploy.models import RouteEvent

            with archive.session() as s:
                outcomes = sorted(r.outcome for r in s.scalars(select(RouteEvent)))
        finally:
            archive.close()
        assert outcomes.count("no-rule") >= 1, outcomes
        assert pacs.received() == []
    except BaseException:
        pacs.stop()
        raise
    finally:
        platform.stop()

    # the model's weights go missing, then come back corrupt: a fresh worker cannot load them
    from hounsfield.config import load_settings
    from hounsfield.registry.mlflow_registry import ModelRegistry

    reg = ModelRegistry(load_settings(cfg))
    weights = reg.bundle_path(reg.resolve("demo-nodules@production")) / "models" / "model.pt"
    saved = weights.read_bytes()
    platform = Platform(cfg, log=tmp_path / "serve2.log").start()
    try:
        for n, damage in enumerate(("missing", "corrupt")):
            if damage == "missing":
                weights.unlink()
            else:
                weights.write_bytes(saved[: len(saved) // 3])
            f, _ = demo_ct(tmp_path / f"m{n}", seed=30 + n, patient=f"MODEL^{damage.upper()}")
            storescu(platform.dicom_port, f)
            jobs = wait_jobs(cfg, lambda js, n=n: sum(
                1 for j in js if "cannot be loaded" in j["error"]) == n + 1)
            bad = [j for j in jobs if "cannot be loaded" in j["error"]]
            assert all(j["state"] == "failed" for j in bad)
        assert pacs.received() == []
        # the operator restores the file and re-queues the last job: it runs and delivers
        weights.write_bytes(saved)
        r = subprocess.run([sys.executable, "-m", "hounsfield.cli", "--config", str(cfg),
                            "jobs", "retry", bad[0]["id"]], env=platform.env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        jobs = wait_jobs(cfg, lambda js: any(j["id"] == bad[0]["id"] and j["state"] == "done"
                                             for j in js))
        done = next(j for j in jobs if j["id"] == bad[0]["id"])
        assert sorted(pacs.received()) == sorted(_results(done))
    finally:
        weights.write_bytes(saved)
        platform.stop()
        pacs.stop()


def test_fifty_studies_at_once(tmp_path):
    """50 studies arrive together from 5 concurrent modalities: 50 jobs, each done once (two
    jobs at a time on this worker, one CPU thread each)."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(pacs.port)},
                          jobs={"worker_concurrency": 2})
    platform = Platform(cfg).start()
    try:
        batches = copies_of_ct(tmp_path, 50)
        procs = []
        for g in range(5):
            files = [f for b in batches[g::5] for f in b]
            procs.append(subprocess.Popen(
                ["storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1",
                 str(platform.dicom_port), *map(str, files)], env=PEER_ENV,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert all(p.wait(300) == 0 for p in procs)
        jobs = wait_jobs(cfg, lambda js: len(js) == 50 and all(
            j["state"] in ("done", "failed", "dead") for j in js), timeout=540)
        assert all(j["state"] == "done" for j in jobs), [j["error"] for j in jobs]
        assert len({j["study_instance_uid"] for j in jobs}) == 50
        received = pacs.received()
        assert len(received) == len(set(received)) == sum(len(_results(j)) for j in jobs)
    finally:
        platform.stop()
        pacs.stop()


@pytest.mark.postgres
def test_job_database_restarted(tmp_path, postgres):
    """The engine's PostgreSQL goes down and comes back while studies are queued: the worker
    reconnects and every job finishes once."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    url = postgres.create_db(f"jobs_{tmp_path.name[:20].lower()}")
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(pacs.port)})
    text = cfg.read_text().replace("[jobs]\n", f"[jobs]\ndatabase_url = \"{url.replace('+psycopg', '')}\"\n")
    cfg.write_text(text)
    platform = Platform(cfg).start()
    try:
        files, _ = demo_ct(tmp_path / "a", seed=41, patient="PG^ONE")
        storescu(platform.dicom_port, files)
        wait_jobs(cfg, lambda js: js and js[0]["state"] == "done")
        postgres.restart()
        files, _ = demo_ct(tmp_path / "b", seed=42, patient="PG^TWO")
        storescu(platform.dicom_port, files)
        jobs = wait_jobs(cfg, lambda js: len(js) == 2 and all(j["state"] == "done" for j in js))
        received = pacs.received()
        assert sorted(received) == sorted(set().union(*(_results(j) for j in jobs)))
    finally:
        platform.stop()
        pacs.stop()


def test_job_timeout_and_cancel_then_retry(tmp_path):
    """A job that runs past ``jobs.timeout_s`` is dead with that reason and sends nothing; a
    running job cancelled by an operator stays cancelled and sends nothing; re-queued, it runs
    and delivers."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = platform_config(tmp_path / "hf", destinations={"pacs": _dest(pacs.port)},
                          jobs={"timeout_s": 3})
    platform = Platform(cfg).start()
    try:
        files, _ = demo_ct(tmp_path / "a", seed=51, patient="SLOW^ONE")
        storescu(platform.dicom_port, files)
        jobs = wait_jobs(cfg, lambda js: js and js[0]["state"] == "dead", timeout=180)
        assert "timed out after 3 s" in jobs[0]["error"], jobs[0]
        time.sleep(3)
        assert pacs.received() == []
    finally:
        platform.stop()
    text = cfg.read_text().replace("timeout_s = 3\n", "")
    cfg.write_text(text)
    platform = Platform(cfg, log=tmp_path / "serve2.log").start()
    cli = [sys.executable, "-m", "hounsfield.cli", "--config", str(cfg), "jobs"]
    try:
        files, _ = demo_ct(tmp_path / "b", seed=52, patient="SLOW^TWO")
        storescu(platform.dicom_port, files)
        first = jobs[0]["id"]
        jobs = wait_jobs(cfg, lambda js: any(j["id"] != first and j["state"] == "running"
                                             for j in js), interval=0.1)
        job = next(j for j in jobs if j["id"] != first)
        r = subprocess.run([*cli, "cancel", job["id"]], env=platform.env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(25)  # the inference step finishes; nothing after it runs
        (now,) = [j for j in jobs_of(cfg) if j["id"] == job["id"]]
        assert now["state"] == "cancelled", now
        assert pacs.received() == []
        r = subprocess.run([*cli, "retry", job["id"]], env=platform.env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        jobs = wait_jobs(cfg, lambda js: any(j["id"] == job["id"] and j["state"] == "done"
                                             for j in js))
        (done,) = [j for j in jobs if j["id"] == job["id"]]
        assert sorted(pacs.received()) == sorted(_results(done))
    finally:
        platform.stop()
        pacs.stop()
