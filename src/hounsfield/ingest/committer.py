"""Group commit for the Storage SCP: many C-STOREs acknowledged after one index commit.

Every association thread parses its data set and hands it to :meth:`GroupCommitter.store`,
which writes the blob right there — file and folder fsynced, so the associations' disk
writes overlap — and queues the instance.  Whichever caller finds no commit running becomes
the leader: it takes everything queued at that moment (up to ``max_batch``) and passes it
through the one write path,
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


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class _DurableBlobs:
    """The blob store, for blobs :meth:`GroupCommitter.store` already wrote with their folder
    fsynced: ``sync`` has nothing left to do; everything else is the real store's."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def sync(self, keys: object) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class GroupCommitter:
    """Leader/follower group commit of :func:`store_instances` calls.

    A caller of :meth:`store` queues its instance; if no commit is running it becomes the
    leader and commits everything queued (up to ``max_batch``), otherwise it waits — the
    running leader, or the next one, takes its instance.  No extra thread: with a single
    association the caller commits its own instance directly.
    """

    def __init__(self, archive: Archive, *, max_batch: int = 64) -> None:
        self.archive = archive
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._pending: list[_Item] = []
        self._leading = False
        self._running = False
        self.batches = 0
        self.instances = 0
        # one journal folder per process: several node processes may share a data dir
        self.journal_root = archive.settings.data_dir / "journal" / "dimse"
        self.journal_dir = self.journal_root / str(os.getpid())
        # the write path's view of the archive: blobs handed over are durable already
        self._indexing = dataclasses.replace(archive, blobs=_DurableBlobs(archive.blobs))

    def recover(self) -> list[str]:
        """Delete blobs that were written but never committed by this process or by node
        processes that are gone (their journal folder names a dead process); returns the keys."""
        removed: list[str] = []
        if not self.journal_root.is_dir():
            return removed
        for folder in sorted(self.journal_root.iterdir()):
            if folder.is_dir() and (folder == self.journal_dir or not _alive(folder.name)):
                removed += self._recover_folder(folder)
                if folder != self.journal_dir and not any(folder.iterdir()):
                    folder.rmdir()
        if removed:
            log.warning("recovered from an interrupted commit: removed %d uncommitted blobs",
                        len(removed))
        return removed

    def _recover_folder(self, folder: Path) -> list[str]:
        removed: list[str] = []
        for jf in sorted(folder.glob("*.keys")):
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
        return removed

    def start(self) -> None:
        if not self._running:
            self.recover()
            self._running = True

    def stop(self) -> None:
        with self._cv:
            self._running = False

    def store(self, parsed: ParsedInstance, source: str) -> StoreOutcome:
        """Durably store ``parsed``: blob written (file + folder fsynced) by the caller, then
        its row committed in a group; returns once committed.  Raises what the write raised
        (:class:`OutOfResources` on a full disk, ...)."""
        if not self._running:
            raise OutOfResources("storage writer is not running")
        key = blob_key(parsed.study_instance_uid, parsed.sop_instance_uid, parsed.sha256)
        jf = self._journal([key])
        if parsed.data is not None:
            try:
                self.archive.blobs.put(key, parsed.data)  # file + folder fsynced
            except Exception:
                jf.unlink(missing_ok=True)
                raise
            parsed.data = None  # the write path now only indexes it
        item = _Item(parsed, source, Future(), jf, key)
        with self._cv:
            self._pending.append(item)
            while not item.future.done():
                if self._leading:
                    self._cv.wait()
                    continue
                self._leading = True
                batch = self._pending[:self.max_batch]
                del self._pending[:len(batch)]
                self._cv.release()
                try:
                    self._commit(batch)
                finally:
                    self._cv.acquire()
                    self._leading = False
                    self._cv.notify_all()
        return item.future.result()

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
