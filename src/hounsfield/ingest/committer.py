"""Group commit for the Storage SCP: many C-STOREs acknowledged after one index commit.

Every association thread parses its data set and hands it to :meth:`GroupCommitter.submit`,
which writes the blob right there — file and folder fsynced, so the associations' disk
writes overlap — and queues the instance.  One writer thread takes everything queued at that
moment (up to ``max_batch``) and passes it through the one write path,
:func:`hounsfield.archive.store.store_instances`, which (the blobs being durable already)
commits the rows once.  Each waiting association
then gets its own outcome — so a C-STORE response is still sent only after *its* instance is
durable, but N concurrent associations share one commit instead of queueing for N.

Crash recovery: before an instance's blob is written, its key goes to a small journal file; it
is removed once the row is committed.  A ``kill -9`` between the blob writes and the commit
leaves blobs no row points to (never a row without a blob); :meth:`GroupCommitter.recover`
(run at start) deletes exactly those, so ``hounsfield check`` is clean after a restart without
walking the whole blob store.  The journal is written without fsync: it survives a process
crash; after a power loss ``hounsfield check --repair`` removes what it may have missed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from hounsfield.archive.archive import Archive
from hounsfield.archive.blobstore import FileBlobStore, blob_key
from hounsfield.archive.models import Instance
from hounsfield.archive.parse import ParsedInstance
from hounsfield.archive.store import StoreOutcome, store_instances
from hounsfield.errors import OutOfResources

log = logging.getLogger(__name__)


@dataclass
class _Item:
    parsed: ParsedInstance
    source: str
    future: Future
    journal: Path
    key: str


class _DurableBlobs:
    """The blob store, for blobs :meth:`GroupCommitter.submit` already wrote with their folder
    fsynced: ``sync`` has nothing left to do; everything else is the real store's."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def sync(self, keys: object) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class GroupCommitter:
    """A single writer thread batching :func:`store_instances` calls."""

    def __init__(self, archive: Archive, *, max_batch: int = 64) -> None:
        self.archive = archive
        self.max_batch = max_batch
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.instances = 0
        self.journal_dir = archive.settings.data_dir / "journal" / "dimse"
        # the write path's view of the archive: blobs handed over are durable already
        self._indexing = dataclasses.replace(archive, blobs=_DurableBlobs(archive.blobs))

    def recover(self) -> list[str]:
        """Delete blobs of batches that were written but never committed; returns their keys."""
        removed: list[str] = []
        if not self.journal_dir.is_dir():
            return removed
        for jf in sorted(self.journal_dir.glob("*.keys")):
            keys = [k for k in jf.read_text().splitlines() if k]
            with self.archive.session() as s:
                known = set(s.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))
            for k in keys:
                if k not in known and self.archive.blobs.exists(k):
                    self.archive.blobs.delete(k)
                    removed.append(k)
            if isinstance(self.archive.blobs, FileBlobStore):
                for folder in {self.archive.blobs.path(k).parent for k in keys}:
                    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
                        tmp.unlink(missing_ok=True)
            jf.unlink()
        if removed:
            log.warning("recovered from an interrupted commit: removed %d uncommitted blobs",
                        len(removed))
        return removed

    def start(self) -> None:
        if self._thread is None:
            self.recover()
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, parsed: ParsedInstance, source: str) -> Future:
        """Write ``parsed``'s blob (fsynced file; its folder is synced with the batch), then
        queue it; the future resolves to its :class:`StoreOutcome` once committed."""
        fut: Future = Future()
        if self._thread is None:
            fut.set_exception(OutOfResources("storage writer is not running"))
            return fut
        key = blob_key(parsed.study_instance_uid, parsed.sop_instance_uid, parsed.sha256)
        try:
            jf = self._journal([key])
            if parsed.data is not None:
                try:
                    self.archive.blobs.put(key, parsed.data)  # file + folder fsynced
                except Exception:
                    jf.unlink(missing_ok=True)
                    raise
                parsed.data = None  # the write path now only indexes it
        except Exception as exc:  # noqa: BLE001 - reported to the waiting association
            fut.set_exception(exc)
            return fut
        self._q.put(_Item(parsed, source, fut, jf, key))
        return fut

    def store(self, parsed: ParsedInstance, source: str, timeout: float | None = None
              ) -> StoreOutcome:
        return self.submit(parsed, source).result(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _journal(self, keys: list[str]) -> Path:
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            jf = self.journal_dir / f"{secrets.token_hex(8)}.keys"
            jf.write_text("\n".join(keys))
            return jf
        except OSError as exc:
            raise OutOfResources(f"cannot write the ingest journal: {exc}") from exc

    def _commit(self, batch: list[_Item]) -> None:
        try:
            outcomes = store_instances(self._indexing, [b.parsed for b in batch],
                                       source=[b.source for b in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter must get an answer
            log.error("group commit of %d instances failed: %s", len(batch), exc)
            for b in batch:
                b.future.set_exception(exc)
            self._reconcile(batch)
            return
        for b in batch:
            os.unlink(b.journal)
        self.batches += 1
        self.instances += len(batch)
        for b, o in zip(batch, outcomes, strict=True):
            b.future.set_result(o)

    def _reconcile(self, batch: list[_Item]) -> None:
        """After a failed commit: drop this batch's blobs that no row points to."""
        try:
            keys = [b.key for b in batch]
            with self.archive.session() as s:
                known = set(s.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))
            for b in batch:
                if b.key not in known:
                    self.archive.blobs.delete(b.key)
                b.journal.unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - the journal stays; the next start retries
            log.warning("cannot clean up after a failed commit: %s", exc)
