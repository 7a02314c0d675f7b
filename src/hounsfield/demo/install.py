"""The demo nodule model that ships with the project, and its installation into the registry.

``src/hounsfield/demo/model/`` is a Hounsfield MONAI-layout bundle (``configs/``,
``models/model.pt``, ``docs/README.md``, ``docs/evaluation/<label>/report.{html,json}``)
trained by ``hounsfield train lung-nodule-detection --preset demo`` on synthetic CTs only and
exported with ``hounsfield models export`` (its README says how, with the numbers).

:func:`install_demo_model` registers it (``ModelRegistry.import_bundle``) and attaches its
evaluation reports (``attach_report``: the ``eval.<label>.cpm|sens_at_1fp|detection_rate|passed``
tags), once: the version is found again by the ``demo_bundle_sha256`` tag, the digest of the
bundle's ``configs/`` and ``models/`` files, so a second call returns it, and a call after an
interrupted one only attaches the reports that are missing.  Promotion (``@production``) is
the registry's approval step, not this function's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hounsfield.errors import InvalidInput, NotFound
from hounsfield.registry.mlflow_registry import ModelRegistry, ModelVersionInfo

DEMO_MODEL_DIR = Path(__file__).parent / "model"
DEMO_MODEL_NAME = "demo-nodules"
DIGEST_TAG = "demo_bundle_sha256"


def bundle_digest(bundle: Path) -> str:
    """SHA-256 over the bundle's ``configs/`` and ``models/`` files (relative path + bytes):
    the model's identity (a README edit is not a new model)."""
    files = sorted(p for sub in ("configs", "models") for p in (bundle / sub).rglob("*")
                   if p.is_file())
    if not any(p.parent.name == "models" for p in files):
        raise InvalidInput(f"{bundle} has no weights under models/: not a model bundle")
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(bundle).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        data = p.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def bundle_reports(bundle: Path) -> dict[str, dict[str, Any]]:
    """The evaluation reports shipped in ``docs/evaluation/<label>/report.json``, by label."""
    root = bundle / "docs" / "evaluation"
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(root.glob("*/report.json")) if root.is_dir() else []:
        try:
            rep = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{f}: not valid JSON: {exc}") from None
        if not isinstance(rep, dict) or "operating_point" not in rep:
            raise InvalidInput(f"{f}: not an evaluation report (no operating_point)")
        out[f.parent.name] = rep
    return out


@contextmanager
def _install_lock(settings) -> Iterator[None]:
    """One installer at a time per data directory (serve and a worker may start together)."""
    root = Path(settings.data_dir) / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".demo-model.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def install_demo_model(settings, *, name: str = DEMO_MODEL_NAME,
                       bundle: Path | None = None) -> ModelVersionInfo:
    """Register the shipped demo model (or ``bundle``) as ``name`` with its evaluation reports
    attached; idempotent: the version already registered for this bundle is returned."""
    bundle = Path(bundle or DEMO_MODEL_DIR)
    if not (bundle / "configs" / "hounsfield.json").is_file():
        raise NotFound(f"the demo model bundle is missing at {bundle} (configs/hounsfield.json)")
    digest = bundle_digest(bundle)
    reports = bundle_reports(bundle)
    if not reports:
        raise InvalidInput(f"{bundle} ships no evaluation report (docs/evaluation/*/report.json)")
    with _install_lock(settings):
        reg = ModelRegistry(settings)
        mv = next((v for v in reg.versions(name) if v.tags.get(DIGEST_TAG) == digest), None)
        if mv is None:
            mv = reg.import_bundle(bundle, name, tags={DIGEST_TAG: digest, "origin": "demo"})
        for label, rep in reports.items():
            if f"eval.{label}.passed" not in mv.tags:
                reg.attach_report(mv, bundle / "docs" / "evaluation" / label, rep, label)
        return reg.resolve(mv.ref)


__all__ = ["DEMO_MODEL_DIR", "DEMO_MODEL_NAME", "DIGEST_TAG", "bundle_digest",
           "bundle_reports", "install_demo_model"]
