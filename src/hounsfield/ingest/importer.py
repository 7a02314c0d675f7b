"""``hounsfield import``: bring files into the archive, headers only (pixels never decoded).

Every input ends in exactly one bucket of the :class:`ImportReport`: imported, duplicate (same
SOPInstanceUID, same bytes), conflict (same UID, different bytes — the first is kept), refused
(with a reason) or skipped (DICOMDIR indexes, MetaImage pixel files).  Objects are stored in
batches; a batch is durable (fsynced blobs, committed rows) before the next one starts, so a
killed import leaves a consistent archive and re-running it completes the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hounsfield.archive import Archive
from hounsfield.archive.parse import ParsedInstance, parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.errors import InvalidDicom
from hounsfield.imaging import research
from hounsfield.ingest.sources import CONVERTERS, iter_items

research.register(CONVERTERS)  # NIfTI / NRRD / MetaImage -> DICOM series

BATCH = 64


@dataclass
class ImportReport:
    imported: int = 0
    replaced: int = 0
    duplicates: int = 0
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    studies: set[str] = field(default_factory=set)

    @property
    def seen(self) -> int:
        return (self.imported + self.replaced + self.duplicates + len(self.conflicts)
                + len(self.refused) + len(self.skipped))


def import_paths(
    archive: Archive,
    paths: Iterable[Path | str],
    *,
    site: str | None = None,
    on_item: Callable[[str], None] | None = None,
) -> ImportReport:
    """Import every object under ``paths``; ``on_item`` is called once per input (progress)."""
    report = ImportReport()
    batch: list[ParsedInstance] = []
    names: list[str] = []

    def flush() -> None:
        if not batch:
            return
        outcomes = store_instances(archive, batch, source=[f"import:{n}" for n in names], site=site)
        for name, parsed, out in zip(names, batch, outcomes, strict=True):
            if out.status == "stored":
                report.imported += 1
                report.bytes += len(parsed.data)
                report.studies.add(out.study_instance_uid)
            elif out.status == "replaced":
                report.replaced += 1
            elif out.status == "duplicate":
                report.duplicates += 1
            else:
                report.conflicts.append((name, f"{out.sop_instance_uid}: {out.reason}"))
            for w in out.warnings:
                report.warnings.append((name, w))
        batch.clear()
        names.clear()

    for item in iter_items(paths):
        if item.error:
            report.refused.append((item.name, item.error))
        elif item.skipped:
            report.skipped.append((item.name, item.skipped))
        else:
            try:
                parsed = parse_part10(item.data or b"")
            except InvalidDicom as exc:
                report.refused.append((item.name, exc.reason))
            else:
                batch.append(parsed)
                names.append(item.name)
                if len(batch) >= BATCH:
                    flush()
        if on_item is not None:
            on_item(item.name)
    flush()
    return report
