"""A whole platform for clinical-pipeline tests: a data directory with the shipped demo model
installed and promoted by an admin, routing rules, export destinations, and ``hounsfield serve``
(all roles, or one) as a subprocess that a test can stop, kill -9 and start again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]

CHEST_RULES = """\
rules:
  - name: chest-ct-nodules
    match:
      modality: [CT]
      slices: {{min: 20}}
    prefer: [thinnest, most_slices]
    model: {model}@production
    profile: {profile}
    destinations: {destinations}
"""


def toml_value(v: object) -> str:
    return json.dumps(v)


def write_config(path: Path, data_dir: Path, *, dicom_port: int, http_port: int,
                 destinations: dict[str, dict] | None = None, stable_after_s: float = 1.0,
                 extra: str = "", jobs: dict | None = None) -> Path:
    lines = [f"data_dir = {toml_value(str(data_dir))}", 'profile = "demo"', "",
             "[dicom]", f"port = {dicom_port}", f"stable_after_s = {stable_after_s}", "",
             "[http]", f"port = {http_port}", "", "[jobs]", "poll_s = 0.2",
             *[f"{k} = {toml_value(v)}" for k, v in (jobs or {}).items()], ""]
    for name, d in (destinations or {}).items():
        lines.append(f"[export.destinations.{name}]")
        for k, v in d.items():
            if isinstance(v, dict):
                continue
            lines.append(f"{k} = {toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(f"[export.destinations.{name}.{k}]")
                lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
        lines.append("")
    path.write_text("\n".join(lines) + extra)
    return path


def install_model(config: Path) -> str:
    """Install the shipped demo model and promote it (as the demo admin); its Device UID."""
    from hounsfield.archive import Archive
    from hounsfield.config import load_settings
    from hounsfield.demo import install_demo_model
    from hounsfield.registry.approval import Approver, promote
    from hounsfield.registry.mlflow_registry import ModelRegistry

    settings = load_settings(config)
    archive = Archive.open(settings)
    try:
        mv = install_demo_model(settings)
        reg = ModelRegistry(settings)
        if "production" not in mv.aliases:
            from hounsfield.demo.clinical import DEMO_APPROVAL, DEMO_REPORT

            promote(reg, archive, mv.ref, approver=Approver("demo", "admin", "test"),
                    reason=DEMO_APPROVAL, report=DEMO_REPORT)
        return reg.resolve(f"{mv.name}@production").device_uid
    finally:
        archive.close()


class Platform:
    """``hounsfield serve`` on a config file, as a subprocess."""

    def __init__(self, config: Path, *, role: str = "all", log: Path | None = None,
                 env: dict | None = None) -> None:
        self.config = config
        self.role = role
        self.log = log or config.parent / f"serve-{role}.log"
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
                    "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        from hounsfield.config import load_settings

        s = load_settings(config)
        self.settings = s
        self.dicom_port, self.http_port = s.dicom.port, s.http.port

    def start(self, wait: bool = True) -> Platform:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hounsfield.cli", "--config", str(self.config), "serve",
             "--role", self.role], env=self.env, stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT)
        if wait:
            if self.role in ("all", "dicom"):
                wait_port(self.dicom_port, timeout=90)
            if self.role in ("all", "api"):
                wait_port(self.http_port, timeout=90)
            if self.role == "worker":
                time.sleep(3)
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode if self.proc else None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def platform_config(tmp: Path, *, destinations: dict[str, dict] | None = None,
                    rules: str | None = None, profile: str = "all",
                    stable_after_s: float = 1.0, dicom_port: int | None = None,
                    extra: str = "", jobs: dict | None = None) -> Path:
    """A data directory with the demo model promoted, chest-CT rules and the destinations."""
    from hounsfield.demo import DEMO_MODEL_NAME

    data = tmp / "var"
    data.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp / "hounsfield.toml", data, dicom_port=dicom_port or free_port(),
                       http_port=free_port(), destinations=destinations,
                       stable_after_s=stable_after_s, extra=extra, jobs=jobs)
    (data / "rules.yaml").write_text(rules if rules is not None else CHEST_RULES.format(
        model=DEMO_MODEL_NAME, profile=profile, destinations=json.dumps(list(destinations or {}))))
    install_model(cfg)
    return cfg


def open_archive(config: Path, *, upgrade: bool = False):  # noqa: ANN201
    """The platform's archive (already migrated by the server: no schema check per poll)."""
    from hounsfield.archive import Archive
    from hounsfield.config import load_settings

    return Archive.open(load_settings(config), upgrade=upgrade)


def jobs_of(config: Path, study_uid: str | None = None) -> list[dict]:
    from hounsfield.deploy.jobs import job_dict, list_jobs

    archive = open_archive(config)
    try:
        return [job_dict(j) for j in list_jobs(archive, study_uid=study_uid)]
    finally:
        archive.close()


def wait_jobs(config: Path, pred, timeout: float = 240.0,  # noqa: ANN001
              interval: float = 0.5) -> list[dict]:
    deadline = time.monotonic() + timeout
    jobs: list[dict] = []
    while time.monotonic() < deadline:
        jobs = jobs_of(config)
        if pred(jobs):
            return jobs
        time.sleep(interval)
    raise AssertionError("jobs never reached the expected state: "
                         f"{json.dumps(jobs, indent=1)[:4000]}")


def demo_ct(folder: Path, *, seed: int = 7, patient: str = "PIPE^ONE", nodules: int = 2,
            study_uid: str | None = None) -> tuple[list[Path], object]:
    """A synthetic chest CT (the demo's size) with known nodules, as Part 10 files."""
    from hounsfield.synth import demo_cases

    case = next(iter(demo_cases(1, seed=seed)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(case.ct.datasets):
        ds.PatientName = patient
        if study_uid:
            ds.StudyInstanceUID = study_uid
        p = folder / f"ct{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths, case
