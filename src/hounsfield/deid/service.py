"""De-identify studies, series or a selection from the archive into the archive or a folder.

Heavy work (a worker job or the CLI calls it, never a request handler).  Each instance is read
from the blob store, de-identified, verified (a verifier finding aborts the instance, it is
never written), then written as a PS3.10 file under ``out/<study>/<series>/<sop>.dcm`` or stored
through the archive's one write path.  Flagged images with burned-in text that no pixel rule
cleaned are withheld with their reason.  The vault records patient / study / series pseudonyms.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from hounsfield.archive.parse import parse_part10
from hounsfield.archive.query import instances_of
from hounsfield.archive.store import store_instances
from hounsfield.config import Settings
from hounsfield.deid.engine import Deidentifier, deidentify_bytes
from hounsfield.deid.pixels import PixelRegionRule
from hounsfield.deid.profile import DEFAULT_SAFE_PRIVATE, EDITION, DeidOptions, SafePrivate
from hounsfield.deid.vault import Vault, uid_key
from hounsfield.deid.verify import Reference, verify
from hounsfield.errors import ConfigurationError, InvalidDicom, NotFound

BATCH = 64


@dataclass
class DeidReport:
    written: int = 0
    withheld: list[tuple[str, str]] = field(default_factory=list)  # (instance, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    studies: dict[str, str] = field(default_factory=dict)  # original -> pseudonymous study UID
    out_dir: Path | None = None


def options_from_settings(settings: Settings, **overrides: bool) -> DeidOptions:
    d = settings.deid
    base = {k: getattr(d, k) for k in DeidOptions.model_fields}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return DeidOptions(**base)


def deidentifier_from_settings(settings: Settings, options: DeidOptions | None = None) -> Deidentifier:
    from pydantic import ValidationError

    d = settings.deid
    try:
        safe = [SafePrivate(**x) for x in d.safe_private]
        rules = [PixelRegionRule(**x) for x in d.pixel_regions]
    except (TypeError, ValidationError) as exc:
        raise ConfigurationError(f"invalid deid.safe_private / deid.pixel_regions: {exc}") from exc
    return Deidentifier(
        key=uid_key(settings),
        options=options or options_from_settings(settings),
        safe_private=list(DEFAULT_SAFE_PRIVATE) + safe,
        pixel_rules=rules,
        max_date_shift_days=d.max_date_shift_days,
    )


def deidentify_uids(archive, uids: Iterable[str], *, out_dir: Path | None = None,  # noqa: ANN001
                    options: DeidOptions | None = None, actor: str = "system",
                    on_item: Callable[[str], None] | None = None) -> DeidReport:
    """De-identify everything under ``uids`` (study, series or instance UIDs).

    One DEIDENTIFY audit event per source study records who, what, where to and the outcome.
    """
    engine = deidentifier_from_settings(archive.settings, options)
    vault = Vault(archive)
    report = DeidReport(out_dir=out_dir)
    with archive.session() as s:
        rows: list[tuple[str, str]] = []
        for uid in uids:
            found = instances_of(s, uid)
            if not found:
                raise NotFound(f"nothing in the archive under UID {uid}")
            rows += [(i.sop_instance_uid, i.blob_key) for i in found]
    seen_vault: set[tuple[str, str]] = set()
    batch = []
    profile = f"{EDITION}; options: " + ",".join(k for k, v in engine.options.model_dump().items() if v)
    for sop, key in rows:
        try:
            raw = archive.blobs.read(key)
            head = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=True)
            orig_study, orig_series = str(head.get("StudyInstanceUID", "")), str(head.get("SeriesInstanceUID", ""))
            original = Reference.of(head)
            data, res = deidentify_bytes(engine, raw)
            ds = res.dataset
            if not res.exportable:
                report.withheld.append((sop, f"burned-in text not cleaned: {res.flagged}"))
                continue
            leaks = verify(ds, engine.options, original=original, safe_private=engine.safe_private)
            if leaks:
                report.failed.append((sop, "verifier: " + "; ".join(map(str, leaks[:3]))))
                continue
        except Exception as exc:  # noqa: BLE001 - one bad instance never stops the job
            report.failed.append((sop, f"{type(exc).__name__}: {exc}"))
            continue
        finally:
            if on_item is not None:
                on_item(sop)
        for kind, pseudo, orig in (("patient", res.patient_pseudonym, res.original_patient),
                                   ("study", engine.map_uid(orig_study), {"StudyInstanceUID": orig_study}),
                                   ("series", engine.map_uid(orig_series), {"SeriesInstanceUID": orig_series})):
            if (kind, pseudo) not in seen_vault:
                vault.record(kind, pseudo, orig, patient_pseudonym=res.patient_pseudonym, profile=profile)
                seen_vault.add((kind, pseudo))
        report.studies[orig_study] = engine.map_uid(orig_study)
        if out_dir is not None:
            _write(out_dir, ds, data)
            report.written += 1
        else:
            try:
                batch.append(parse_part10(data, name=f"deid:{ds.SOPInstanceUID}"))
            except InvalidDicom as exc:
                report.failed.append((sop, exc.reason))
                continue
            if len(batch) >= BATCH:
                report.written += _store(archive, batch)
    if batch:
        report.written += _store(archive, batch)
    _audit(archive, report, actor, out_dir)
    return report


def _audit(archive, report: DeidReport, actor: str, out_dir: Path | None) -> None:  # noqa: ANN001
    from hounsfield.audit.trail import Action, Entry, Outcome, record_many

    bad = len(report.failed) + len(report.withheld)
    record_many(archive, [Entry(
        action=Action.DEIDENTIFY, actor=actor, study_instance_uid=orig,
        destination=str(out_dir) if out_dir else "archive",
        outcome=Outcome.SUCCESS if not bad else Outcome.MINOR_FAILURE,
        detail=f"-> {new}; {report.written} written, {len(report.withheld)} withheld, "
               f"{len(report.failed)} failed") for orig, new in report.studies.items()])


def _store(archive, batch: list) -> int:  # noqa: ANN001
    outs = store_instances(archive, batch, source="deid", site=archive.settings.site)
    batch.clear()
    return sum(1 for o in outs if o.status in ("stored", "replaced", "duplicate"))


def _write(out_dir: Path, ds, data: bytes) -> None:  # noqa: ANN001
    folder = out_dir / str(ds.get("StudyInstanceUID", "study")) / str(ds.get("SeriesInstanceUID", "series"))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
