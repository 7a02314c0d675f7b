"""Group commit for the Storage SCP: many C-STOREs acknowledged after one index commit.

Every association thread parses its data set and hands it to :meth:`GroupCommitter.store`,
which writes the blob right there and queues the instance.  Whichever caller finds no commit
running becomes the leader: it takes everything queued at that moment (up to ``max_batch``) and
passes it through the one write path, :func:`hounsfield.archive.store.store_instances`, which
commits the rows once.  Each waiting association then gets its own outcome — a C-STORE
response is sent only after *its* instance is on disk and committed to the index, but N
concurrent associations share one commit instead of queueing for N.

One flush per acknowledgement.  The blob is created under its final name (no temporary file,
rename or folder fsync), complete in the page cache and its write-out to the disk started
(``sync_file_range``) before its row is committed, and fsynced after the commit; the
acknowledgement waits for both.  The index commit does not wait
for the database log to reach the disk (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``).
What makes that safe is the ingest journal: before a blob is written its key is appended to
this process's journal, and a journal file is deleted only after a *checkpoint* — every
second while instances arrive — has synced the filesystem (``syncfs``: directory entries
included) and the index log.  After a crash or power loss, :meth:`GroupCommitter.recover`
(run at start) re-reads the journals of dead processes: a key whose blob is complete (its hash
matches) but whose row is missing is indexed again; a partial blob (never acknowledged) is
deleted, with its row if the row was committed.  So ``hounsfield check`` is clean after a restart and no acknowledged instance is lost,
at the cost of one fsync per acknowledgement instead of three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select

from hounsfield.archive.archive import Archive
from hounsfield.archive.blobstore import FileBlobStore, blob_key
from hounsfield.archive.db import checkpoint, is_sqlite, make_engine, make_sessionmaker
from hounsfield.archive.models import Instance
from hounsfield.archive.parse import ParsedInstance, parse_part10
from hounsfield.archive.store import StoreOutcome, store_instances
from hounsfield.errors import HounsfieldError, OutOfResources

log = logging.getLogger(__name__)


@dataclass
class _Item:
    parsed: ParsedInstance
    source: str
    future: Future
    journal: int
    key: str


class _Journal:
    """This process's ingest journal: append-only files of blob keys, rotated and deleted at
    checkpoints once every key in them is committed (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._seq = 0
        self._fd = -1
        self._inflight: dict[int, int] = {}  # file number -> keys not yet committed
        self.dirty = False  # something committed since the last checkpoint

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:08d}.keys"

    def add(self, key: str) -> int:
        """Append ``key`` (no fsync: see :meth:`GroupCommitter.checkpoint`); returns the file."""
        with self._lock:
            try:
                if self._fd < 0:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self._seq += 1
                    self._fd = os.open(self._path(self._seq),
                                       os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                    self._inflight[self._seq] = 0
                os.write(self._fd, key.encode() + b"\n")
            except OSError as exc:
                raise OutOfResources(f"cannot write the ingest journal: {exc}") from exc
            self._inflight[self._seq] += 1
            return self._seq

    def done(self, seq: int) -> None:
        with self._lock:
            self._inflight[seq] -= 1
            self.dirty = True

    def rotate(self) -> list[int]:
        """Start a new file; returns the older files whose keys are all committed."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.dirty = False
            return [seq for seq, n in self._inflight.items() if n == 0]

    def drop(self, seqs: list[int]) -> None:
        with self._lock:
            for seq in seqs:
                self._path(seq).unlink(missing_ok=True)
                self._inflight.pop(seq, None)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


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
    running leader, or the next one, takes its instance.  With a single association the caller
    commits its own instance directly.  A background thread runs :meth:`checkpoint` every
    ``checkpoint_s`` seconds while instances arrive.
    """

    def __init__(self, archive: Archive, *, max_batch: int = 64,
                 checkpoint_s: float = 1.0) -> None:
        self.archive = archive
        self.max_batch = max_batch
        self.checkpoint_s = checkpoint_s
        self._cv = threading.Condition()
        self._pending: list[_Item] = []
        self._leading = False
        self._running = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.instances = 0
        self.checkpoints = 0
        # one journal folder per process: several node processes may share a data dir
        self.journal_root = archive.settings.data_dir / "journal" / "dimse"
        self.journal_dir = self.journal_root / str(os.getpid())
        self.journal = _Journal(self.journal_dir)
        # the write path's view of the archive: blobs handed over are on disk already, and the
        # index commit does not wait for the log flush (the journal covers it until a checkpoint)
        url = archive.settings.index_url
        self._lock_path = (archive.settings.data_dir / "journal" / "index-writer.lock"
                           if is_sqlite(url) and archive.settings.dicom.reuse_port else None)
        if self._lock_path is not None:
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._relaxed = make_engine(url, immediate=True, relaxed=True)
        self._indexing = dataclasses.replace(archive, blobs=_DurableBlobs(archive.blobs),
                                             write_engine=self._relaxed,
                                             _write=make_sessionmaker(self._relaxed))

    # -- crash recovery ---------------------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Settle the journals of this process and of node processes that are gone: a key whose
        row is missing is indexed again when its blob is complete, deleted when it is partial.
        Returns ``{"reindexed": [...], "removed": [...]}``."""
        out: dict[str, list[str]] = {"reindexed": [], "removed": []}
        if not self.journal_root.is_dir():
            return out
        for folder in sorted(self.journal_root.iterdir()):
            if folder.is_dir() and (folder == self.journal_dir or not _alive(folder.name)):
                for jf in sorted(folder.glob("*.keys")):
                    self._recover_file(jf, out)
                    jf.unlink()
                if folder != self.journal_dir and not any(folder.iterdir()):
                    folder.rmdir()
        if out["reindexed"] or out["removed"]:
            log.warning("recovered from an interrupted ingest: %d instances indexed again, "
                        "%d partial blobs removed", len(out["reindexed"]), len(out["removed"]))
        return out

    def _recover_file(self, jf: Path, out: dict[str, list[str]]) -> None:
        keys = list(dict.fromkeys(k for k in jf.read_text(errors="replace").splitlines() if k))
        with self.archive.session() as s:
            known = set(s.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))
        for k in keys:
            if k in known:
                if not self._complete(k):  # committed while its fsync was cut short
                    with self.archive.write_session() as s, s.begin():
                        s.execute(delete(Instance).where(Instance.blob_key == k))
                    self.archive.blobs.delete(k)
                    out["removed"].append(k)
                continue
            if not self.archive.blobs.exists(k):
                continue
            if self._reindex(k):
                out["reindexed"].append(k)
            else:
                self.archive.blobs.delete(k)
                out["removed"].append(k)
        if isinstance(self.archive.blobs, FileBlobStore):
            for folder in {self.archive.blobs.path(k).parent for k in keys}:
                for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
                    tmp.unlink(missing_ok=True)

    def _complete(self, key: str) -> bool:
        try:
            data = self.archive.blobs.read(key)
        except (HounsfieldError, OSError):
            return False
        return key.endswith(f".{hashlib.sha256(data).hexdigest()[:16]}.dcm")

    def _reindex(self, key: str) -> bool:
        """Index a journalled blob whose row is missing, if it is complete."""
        try:
            data = self.archive.blobs.read(key)
            if not key.endswith(f".{hashlib.sha256(data).hexdigest()[:16]}.dcm"):
                return False  # cut short by the crash: never acknowledged
            parsed = parse_part10(data, name=key)
            outcome = store_instances(self.archive, [parsed], source="recovered ingest")[0]
            return outcome.status in ("stored", "duplicate", "replaced")
        except (HounsfieldError, OSError) as exc:
            log.warning("journalled blob %s cannot be indexed again: %s", key, exc)
            return False

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if not self._running:
            self.recover()
            self._running = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._checkpointer, name="ingest-checkpoint",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._running = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self.checkpoint()
        self.journal.close()
        self._relaxed.dispose()

    def _checkpointer(self) -> None:
        while not self._stop.wait(self.checkpoint_s):
            if self.journal.dirty:
                try:
                    self.checkpoint()
                except Exception as exc:  # noqa: BLE001 - retried next tick; journal stays
                    log.error("ingest checkpoint failed (retrying): %s", exc)

    def checkpoint(self) -> None:
        """Make everything committed so far durable (filesystem and index log), then delete
        the journal files it covered."""
        done = self.journal.rotate()
        if not done:
            return
        self.archive.blobs.sync_all()
        checkpoint(self._relaxed)
        self.journal.drop(done)
        self.checkpoints += 1

    # -- the write path -----------------------------------------------------------------------
    def store(self, parsed: ParsedInstance, source: str) -> StoreOutcome:
        """Durably store ``parsed``: blob written and fsynced by the caller, then its row
        committed in a group; returns once committed.  Raises what the write raised
        (:class:`OutOfResources` on a full disk, ...)."""
        if not self._running:
            raise OutOfResources("storage writer is not running")
        key = blob_key(parsed.study_instance_uid, parsed.sop_instance_uid, parsed.sha256)
        seq = self.journal.add(key)
        flush: Callable[[], None] | None = None
        if parsed.data is not None:
            try:
                # the bytes are complete in the page cache (and on their way to the disk)
                # before the row can be committed; the fsync that makes them durable follows
                # the commit (see recover(): a row whose blob did not reach the disk was never
                # acknowledged and is dropped after a crash)
                blobs = self.archive.blobs
                if isinstance(blobs, FileBlobStore):
                    flush = blobs.prepare_direct(key, parsed.data)
                else:
                    blobs.put(key, parsed.data)
            except Exception:
                self.journal.done(seq)
                raise
            parsed.data = None  # the write path now only indexes it
        try:
            try:
                parsed.finish_json()  # while the blob is written out (when the caller deferred it)
            except Exception:
                self._drop_unindexed([key])
                self.journal.done(seq)
                raise
            outcome = self._index(_Item(parsed, source, Future(), seq, key))
        except BaseException:
            if flush is not None:
                with contextlib.suppress(OutOfResources):
                    flush()  # closes the file; the failure above is the one to report
            raise
        if flush is not None:
            flush()  # OutOfResources if the disk refused: not acknowledged
        return outcome

    def _index(self, item: _Item) -> StoreOutcome:
        """Commit ``item``'s row in a group with whatever else is waiting (one caller leads a
        batch while the others wait); its outcome, or what the commit raised."""
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

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with self._writer_lock():
                outcomes = store_instances(self._indexing, [b.parsed for b in batch],
                                           source=[b.source for b in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter must get an answer
            log.error("group commit of %d instances failed: %s", len(batch), exc)
            for b in batch:
                b.future.set_exception(exc)
            self._reconcile(batch)
            return
        for b in batch:
            self.journal.done(b.journal)
        self.batches += 1
        self.instances += len(batch)
        for b, o in zip(batch, outcomes, strict=True):
            b.future.set_result(o)

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """Node processes sharing one SQLite index (``dicom.reuse_port``) take turns on a file
        lock, which hands over at once, instead of SQLite's busy handler, which sleeps up to
        100 ms between retries."""
        if self._lock_path is None:
            yield
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _drop_unindexed(self, keys: list[str]) -> None:
        """Delete the blobs under ``keys`` that no row points to (a blob shared with an
        identical instance stored earlier stays)."""
        with self.archive.session() as s:
            known = set(s.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))
        for k in keys:
            if k not in known:
                self.archive.blobs.delete(k)

    def _reconcile(self, batch: list[_Item]) -> None:
        """After a failed commit: drop this batch's blobs that no row points to."""
        try:
            self._drop_unindexed([b.key for b in batch])
        except Exception as exc:  # noqa: BLE001 - the journal keeps them for the next start
            log.warning("cannot clean up after a failed commit: %s", exc)
            return
        for b in batch:
            self.journal.done(b.journal)
