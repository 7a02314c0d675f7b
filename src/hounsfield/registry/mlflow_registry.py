"""The model registry: MLflow tracking + model versions, backend in the data directory.

Tracking and registry share one SQLAlchemy store (``sqlite:///<data_dir>/mlflow/mlflow.db`` by
default, or ``settings.ai.mlflow_url`` / ``HOUNSFIELD_AI__MLFLOW_URL``, e.g. PostgreSQL) and a
local artifact root ``<data_dir>/mlflow/artifacts``.  A model version's source is the ``bundle`` artifact folder of
the run that produced it (a MONAI-layout bundle), and it carries lineage tags:
``dataset``, ``dataset_hash``, ``code_version``, ``recipe``, ``recipe_hash``, ``base_model``,
plus evaluation headline numbers once a report is attached.

Every version carries a ``device_uid`` tag: the DICOM Device UID its results name in
Contributing Equipment (IHE AI Results), a ``2.25.<uuid4>`` UID made at registration, so every
retrain or import gets a new one.  Versions registered before the tag existed get one derived
from their identity the first time they are read (persisted then; deterministic, so two readers
racing to assign it agree).

References: ``NAME`` (latest version: research commands only), ``NAME@VERSION`` and
``NAME@ALIAS`` (an MLflow registered-model alias such as ``nodules@production``, set only by
:mod:`hounsfield.registry.approval`).  Routing uses :func:`hounsfield.registry.approval.resolve_for_routing`,
which accepts approved aliases only.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hounsfield.dicom.uids import derived_uid
from hounsfield.errors import InvalidInput, NotFound

EXPERIMENT = "lung-nodule-detection"
DEVICE_UID_TAG = "device_uid"
#: the alias clinical routing names by default
PRODUCTION = "production"
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    source: str
    run_id: str
    tags: dict[str, str]
    created_ms: int
    #: the registered model's aliases that point at this version (e.g. ``("production",)``)
    aliases: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def device_uid(self) -> str:
        """The DICOM Device UID of this version (Contributing Equipment of its results)."""
        return self.tags[DEVICE_UID_TAG]


def validate_alias(alias: str) -> tuple[bool, str]:
    """``(ok, reason)`` for an alias name: lower-case letters, digits, ``_`` and ``-``, starting
    with a letter; not ``latest`` (MLflow reserves it, and routing never names it)."""
    if not _ALIAS_RE.match(alias or ""):
        return False, (f"alias {alias!r}: 1-63 lower-case letters, digits, '_' or '-', "
                       "starting with a letter (e.g. production)")
    if alias == "latest" or re.fullmatch(r"v\d+", alias):
        return False, f"alias {alias!r} is reserved by MLflow; name a stage such as production"
    return True, ""


def tracking_uri(settings) -> str:
    if settings.ai.mlflow_url:
        return settings.ai.mlflow_url
    root = Path(settings.data_dir) / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_root(settings) -> str:
    return (Path(settings.data_dir) / "mlflow" / "artifacts").absolute().as_uri()


def _local(uri: str) -> Path:
    p = urlparse(uri)
    if p.scheme not in ("", "file"):
        raise InvalidInput(f"artifact store {p.scheme!r} is not local; download the bundle first")
    return Path(unquote(p.path))


class ModelRegistry:
    """Versions, lineage and artifacts of trained models (MLflow-backed)."""

    def __init__(self, settings) -> None:
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.settings = settings
        self.uri = tracking_uri(settings)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- runs ------------------------------------------------------------------------------------
    def experiment_id(self, name: str = EXPERIMENT) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=f"{artifact_root(self.settings)}/{name}")

    def start_run(self, run_name: str, params: dict[str, Any], experiment: str = EXPERIMENT) -> str:
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name)
        for k, v in params.items():
            self.client.log_param(run.info.run_id, k, str(v)[:6000])
        return run.info.run_id

    def run_artifacts(self, run_id: str) -> Path:
        return _local(self.client.get_run(run_id).info.artifact_uri)

    # -- versions --------------------------------------------------------------------------------
    def register(self, name: str, run_id: str, bundle_dir: Path, tags: dict[str, Any],
                 description: str = "") -> ModelVersionInfo:
        """Copy ``bundle_dir`` into the run's artifacts and register it as a new version."""
        self.client.log_artifacts(run_id, str(bundle_dir), "bundle")
        try:
            self.client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MLflow raises its own RestException
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/bundle"
        tags = {k: str(v) for k, v in tags.items()}
        tags[DEVICE_UID_TAG] = f"2.25.{uuid.uuid4().int}"  # PS3.5 B.2: new for every version
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                              description=description)
        return self._info(mv)

    def attach_report(self, mv: ModelVersionInfo, report_dir: Path, report: dict[str, Any],
                      label: str) -> None:
        """Attach an evaluation report (HTML + JSON) and its headline numbers to a version."""
        self.client.log_artifacts(mv.run_id, str(report_dir), f"evaluation/{label}")
        heads = {"cpm": report.get("cpm"), "sens_at_1fp": report.get("sensitivity_at_1fp"),
                 "detection_rate": report["operating_point"].get("sensitivity"),
                 "passed": report.get("passed"), "attached_ms": int(time.time() * 1000)}
        for k, v in heads.items():
            self.client.set_model_version_tag(mv.name, mv.version, f"eval.{label}.{k}", str(v))
            if isinstance(v, float):
                self.client.log_metric(mv.run_id, f"{label}_{k}", v)

    def resolve(self, ref: str) -> ModelVersionInfo:
        """``NAME`` (latest version), ``NAME@VERSION`` or ``NAME@ALIAS`` (e.g. ``@production``).

        Plain ``NAME`` is for research commands; clinical routing calls
        :func:`~hounsfield.registry.approval.resolve_for_routing`, which refuses it."""
        name, _, ver = ref.partition("@")
        if not name:
            raise InvalidInput("model reference is NAME, NAME@VERSION or NAME@ALIAS")
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"no registered model named {name!r}")
        if not ver:
            return versions[-1]
        if not ver.isdigit():
            ok, why = validate_alias(ver)
            if not ok:
                raise InvalidInput(f"model reference {ref!r}: {why}")
            for v in versions:
                if ver in v.aliases:
                    return v
            held = sorted({a for v in versions for a in v.aliases})
            raise NotFound(f"model {name!r} has no alias {ver!r} "
                           f"({'aliases: ' + ', '.join(held) if held else 'no aliases set'}; "
                           f"an admin sets one with `hounsfield models promote`)")
        for v in versions:
            if v.version == ver:
                return v
        raise NotFound(f"model {name!r} has no version {ver!r} "
                       f"(has {', '.join(v.version for v in versions)})")

    def versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        filt = f"name='{name}'" if name else ""
        if name is not None and "'" in name:
            raise InvalidInput("model names cannot contain quotes")
        aliases: dict[tuple[str, str], list[str]] = {}
        for rm in self.client.search_registered_models(filter_string=filt):
            for alias, ver in (rm.aliases or {}).items():
                aliases.setdefault((rm.name, str(ver)), []).append(alias)
        mvs = [self._info(m, tuple(sorted(aliases.get((m.name, str(m.version)), ()))))
               for m in self.client.search_model_versions(filt)]
        return sorted(mvs, key=lambda m: (m.name, int(m.version)))

    def model_names(self) -> list[str]:
        return sorted(rm.name for rm in self.client.search_registered_models())

    def bundle_path(self, mv: ModelVersionInfo) -> Path:
        p = _local(mv.source)
        if not p.is_dir():
            raise NotFound(f"bundle of {mv.ref} is missing at {p}")
        return p

    def reports(self, mv: ModelVersionInfo) -> list[Path]:
        root = self.run_artifacts(mv.run_id) / "evaluation"
        return sorted(root.glob("*/report.html")) if root.is_dir() else []

    def import_bundle(self, path: Path, name: str, *, tags: dict[str, Any] | None = None) -> ModelVersionInfo:
        """Register a bundle directory from disk (ours, or a MONAI model-zoo bundle)."""
        from hounsfield.models.bundle import read_bundle_info

        info = read_bundle_info(path)
        meta = info["metadata"]
        hf = info["hounsfield"] or {}
        lineage = hf.get("lineage", {})
        run_id = self.start_run(f"import {name}", {"source_path": str(path),
                                                   "bundle_version": meta.get("version", "")},
                                experiment="imports")
        all_tags = {"origin": "import", "bundle_format": "hounsfield" if hf else "monai-zoo",
                    "bundle_name": meta.get("name", ""), "bundle_version": meta.get("version", ""),
                    "monai_version": meta.get("monai_version", ""), **lineage, **(tags or {})}
        mv = self.register(name, run_id, path, all_tags, description=meta.get("description", ""))
        self.client.set_terminated(run_id)
        return mv

    def export_bundle(self, mv: ModelVersionInfo, dest: Path) -> Path:
        """Copy a version's bundle (and its evaluation reports) to ``dest``."""
        if dest.exists() and any(dest.iterdir()):
            raise InvalidInput(f"{dest} exists and is not empty")
        src = self.bundle_path(mv)
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
            stage = Path(tmp) / "bundle"
            shutil.copytree(src, stage)
            ev = self.run_artifacts(mv.run_id) / "evaluation"
            if ev.is_dir():
                shutil.copytree(ev, stage / "docs" / "evaluation")
            if dest.exists():
                dest.rmdir()
            shutil.move(str(stage), dest)
        return dest

    def _info(self, m, aliases: tuple[str, ...] | None = None) -> ModelVersionInfo:
        tags = dict(m.tags or {})
        created = int(m.creation_timestamp or 0)
        if DEVICE_UID_TAG not in tags:  # registered before device UIDs: assign one, once
            tags[DEVICE_UID_TAG] = derived_uid("hounsfield-model-device", m.name, str(m.version),
                                               m.run_id or "", str(created))
            self.client.set_model_version_tag(m.name, str(m.version), DEVICE_UID_TAG,
                                              tags[DEVICE_UID_TAG])
        if aliases is None:
            aliases = tuple(sorted(getattr(m, "aliases", None) or ()))
        return ModelVersionInfo(m.name, str(m.version), m.source, m.run_id or "", tags, created,
                                aliases)
