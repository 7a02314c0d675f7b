"""Blob store: the exact Part 10 bytes of each instance.

The interface is deliberately small (put / open / read / exists / delete / keys / size) so an
S3-compatible store can implement it.  :class:`FileBlobStore` writes atomically: a temporary
file in the target folder, ``fsync``, ``rename``, then ``fsync`` of the folder — a crash leaves
either the whole blob or nothing under its key (plus, at worst, a ``.tmp`` file that
:meth:`FileBlobStore.sweep_temp` removes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import re
import sys
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from hounsfield.errors import NotFound, OutOfResources


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, *, sync_dir: bool = True,
            deferred: bool = False) -> None: ...
    def sync(self, keys: Iterable[str]) -> None: ...
    def sync_all(self) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def read(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def keys(self) -> Iterator[str]: ...
    def size(self, key: str) -> int: ...


def blob_key(study_instance_uid: str, sop_instance_uid: str, sha256: str) -> str:
    """Key of an instance's blob: ``<hash prefix>/<StudyInstanceUID>/<SOP UID>.<sha256[:16]>.dcm``.

    One folder per study keeps a study's files together (export, deletion) and lets a batch of
    one study's instances share one directory fsync.  The content hash in the key means two
    different objects sent under one SOPInstanceUID never overwrite each other's bytes, even
    when two writers race.
    """
    h = hashlib.sha1(study_instance_uid.encode()).hexdigest()
    return f"{h[:2]}/{study_instance_uid}/{sop_instance_uid}.{sha256[:16]}.dcm"


SYNCFS_MIN_BATCH = 16
# a key as blob_key makes it: <2 hex>/<UID>/<UID>.<16 hex>.dcm (UIDs are digits and dots)
_PLAIN_KEY = re.compile(r"[0-9a-f]{2}/[0-9][0-9.]{0,63}/[0-9][0-9.]{0,63}\.[0-9a-f]{16}\.dcm")


class FileBlobStore:
    """Blobs as files under ``root``; durable when ``fsync`` is on (the default)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved = self.root.resolve()

    def path(self, key: str) -> Path:
        if _PLAIN_KEY.fullmatch(key):  # what blob_key makes: no '..', no link to resolve
            return self._resolved / key
        p = (self.root / key).resolve()
        if not p.is_relative_to(self._resolved):
            raise NotFound(f"blob key outside the store: {key!r}")
        return p

    def put(self, key: str, data: bytes, *, sync_dir: bool = True, deferred: bool = False) -> None:
        """Write ``data`` under ``key`` atomically (temp file + rename).

        Default: the file and its folder are fsynced before returning.  ``sync_dir=False`` skips
        the folder fsync; ``deferred=True`` skips every fsync.  In both cases the caller must
        :meth:`sync` the keys before acknowledging them — which lets a batch share one flush.
        (:meth:`prepare_direct` is the one-fsync way without a temporary file.)"""
        target = self.path(key)
        folder = target.parent
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.fsync and not deferred:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutOfResources(f"cannot write blob {key}: {exc.strerror or exc}") from exc
        if self.fsync and sync_dir and not deferred:
            _fsync_dir(folder)
            if created:  # the new folder's own entry must be durable too
                _fsync_dir(folder.parent)
                _fsync_dir(folder.parent.parent)

    def _write_direct(self, target: Path, data: bytes):  # noqa: ANN201 - Callable | None
        """Create ``target`` (``O_EXCL``) with ``data`` in the page cache — complete for every
        reader once this returns — and return the function that fsyncs it (call it exactly
        once).  ``None`` when the name exists with another size (a concurrent or interrupted
        writer: the caller then uses the atomic :meth:`put`, which replaces it)."""
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            try:
                if target.stat().st_size != len(data):
                    return None
                fd = os.open(target, os.O_RDONLY)  # same key and size: the same bytes
            except OSError:
                return None
            return functools.partial(_fsync_close, fd, target)
        except OSError as exc:
            raise OutOfResources(f"cannot write blob {target.name}: {exc.strerror or exc}") from exc
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            os.close(fd)
            target.unlink(missing_ok=True)
            raise OutOfResources(f"cannot write blob {target.name}: {exc.strerror or exc}") from exc
        _start_writeback(fd)
        return functools.partial(_fsync_close, fd, target)

    def prepare_direct(self, key: str, data: bytes):  # noqa: ANN201 - Callable
        """:meth:`_write_direct` for ``key`` (folder created); the returned function makes the
        blob durable with one fsync.  On journalling filesystems (ext4, XFS) that fsync also
        commits the new directory entry; POSIX does not promise it, so the caller journals the
        key until a later :meth:`sync_all` and, after a crash, verifies it (a partial file under
        its key has the wrong hash).  Falls back to the atomic, fully synced :meth:`put`."""
        target = self.path(key)
        folder = target.parent
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        flush = self._write_direct(target, data) if self.fsync else None
        if flush is None:
            self.put(key, data)
            return lambda: None
        if created:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)
        return flush

    def sync_all(self) -> None:
        """Everything written so far durable, directory entries included (``syncfs``)."""
        if self.fsync and not _syncfs(self.root):
            os.sync()

    def sync(self, keys: Iterable[str]) -> None:
        """Make the blobs under ``keys`` durable — contents and directory entries.

        On Linux one ``syncfs(2)`` flushes the whole batch (every file and folder of the store's
        filesystem) in a single call, which is far cheaper than an fsync per file; elsewhere each
        file and distinct folder is fsynced."""
        if not self.fsync:
            return
        keys = list(keys)
        if not keys:
            return
        # big batches: one syncfs; small ones (a STOW request): per-file fsync, which does not
        # wait for unrelated dirty data elsewhere on the filesystem
        if len(keys) >= SYNCFS_MIN_BATCH and _syncfs(self.root):
            return
        folders = set()
        for k in keys:
            p = self.path(k)
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folders.add(p.parent)
        for folder in sorted(folders | {f.parent for f in folders} | {self.root}):
            _fsync_dir(folder)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob missing: {key}") from exc

    def read(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob missing: {key}") from exc

    def delete(self, key: str) -> None:
        p = self.path(key)
        p.unlink(missing_ok=True)
        if self.fsync:
            _fsync_dir(p.parent)

    def keys(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(".dcm") and not name.startswith("."):
                    yield os.path.relpath(os.path.join(dirpath, name), self.root)

    def sweep_temp(self) -> list[str]:
        """Remove temporary files left by a crash mid-write; returns what was removed."""
        removed = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(dirpath, name))
                    removed.append(os.path.relpath(os.path.join(dirpath, name), self.root))
        return removed


def _syncfs(path: Path) -> bool:
    """``syncfs(2)`` on the filesystem holding ``path``; False where it is not available."""
    libc = _libc()
    if libc is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OutOfResources(f"syncfs failed on {path}: {os.strerror(err)}")
        return True
    finally:
        os.close(fd)


@functools.cache
def _libc():  # noqa: ANN202
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.syncfs  # noqa: B018 - probe
        return libc
    except (OSError, AttributeError):
        return None


@functools.cache
def _sync_file_range():  # noqa: ANN202
    libc = _libc()
    fn = getattr(libc, "sync_file_range", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


def _start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to the disk without waiting for them
    (``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE``, Linux): the ``fsync`` that follows
    a little later — the one that makes it durable — then has less left to wait for."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, 0, 0, 2)  # a failure here is the fsync's to report


def _fsync_close(fd: int, target: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OutOfResources(f"cannot flush blob {target.name}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
