"""``hounsfield import``: bring files into the archive, headers only (pixels never decoded).

Every input ends in exactly one bucket of the :class:`ImportReport`: imported, duplicate (same
SOPInstanceUID, same bytes), conflict (same UID, different bytes — the first is kept), refused
(with a reason) or skipped (DICOMDIR indexes, MetaImage pixel files).

Pipeline: worker processes read, parse and hash each file and write its blob (fsynced); the
main process indexes them in batches of :data:`BATCH` (one transaction each).  A row is only
committed after its blob is durable, so a killed import leaves a consistent archive (at worst
orphan blobs that ``check --repair`` removes) and re-running it completes the rest.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hounsfield.archive import Archive
from hounsfield.archive.blobstore import FileBlobStore, blob_key
from hounsfield.archive.parse import ParsedInstance, parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.errors import HounsfieldError, InvalidDicom
from hounsfield.imaging import research
from hounsfield.ingest.sources import CONVERTERS, Item, iter_items

research.register(CONVERTERS)  # NIfTI / NRRD / MetaImage -> DICOM series

BATCH = 128
#: below this many candidates the import runs in-process (no worker start-up cost)
PARALLEL_THRESHOLD = 64


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


def _prepare(item: Item, blob_root: str | None, fsync: bool) -> tuple[str, ParsedInstance | str]:
    """Worker: load + parse one item; with ``blob_root``, also write its blob durably."""
    loaded = item.load()
    if loaded.error:
        return item.name, loaded.error
    try:
        parsed = parse_part10(loaded.data or b"")
    except InvalidDicom as exc:
        return item.name, exc.reason
    if blob_root is not None:
        try:
            store = FileBlobStore(Path(blob_root), fsync=fsync)
            key = blob_key(parsed.study_instance_uid, parsed.sop_instance_uid, parsed.sha256)
            if not store.exists(key):
                store.put(key, parsed.data, deferred=True)  # the indexer syncs each batch once
        except HounsfieldError as exc:
            return item.name, exc.reason
        parsed.data = None  # durable already; don't ship the bytes back
    return item.name, parsed


def import_paths(
    archive: Archive,
    paths: Iterable[Path | str],
    *,
    site: str | None = None,
    on_item: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> ImportReport:
    """Import every object under ``paths``; ``on_item`` is called once per input (progress)."""
    paths = list(paths)
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
                report.bytes += parsed.size
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

    def take(name: str, result: ParsedInstance | str) -> None:
        if isinstance(result, str):
            report.refused.append((name, result))
        else:
            batch.append(result)
            names.append(name)
            if len(batch) >= BATCH:
                flush()
        if on_item is not None:
            on_item(name)

    def skip(item: Item) -> bool:
        if item.error:
            report.refused.append((item.name, item.error))
        elif item.skipped:
            report.skipped.append((item.name, item.skipped))
        else:
            return False
        if on_item is not None:
            on_item(item.name)
        return True

    n_workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    blob_root = getattr(archive.blobs, "root", None)
    if n_workers <= 1 or blob_root is None or _few(paths):
        for item in iter_items(paths):
            if not skip(item):
                take(*_prepare(item, None, archive.settings.fsync))
        flush()
        return report

    # spawn: no forked copies of this process's threads and locks, and nothing left running
    # after the import (a forkserver outlives its parent in some runs)
    ctx = multiprocessing.get_context("spawn")
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
        for item in iter_items(paths):
            if skip(item):
                continue
            pending.append(pool.submit(_prepare, item, str(blob_root), archive.settings.fsync))
            while len(pending) > 8 * n_workers:
                take(*pending.popleft().result())
        while pending:
            take(*pending.popleft().result())
    flush()
    return report


def _few(paths: list[Path | str]) -> bool:
    n = 0
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for _d, _s, files in os.walk(p):
                n += len(files)
                if n >= PARALLEL_THRESHOLD:
                    return False
        else:
            n += 1
    return n < PARALLEL_THRESHOLD
