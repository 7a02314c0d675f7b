"""Blob store: the exact Part 10 bytes of each instance.

The interface is deliberately small (put / open / read / exists / delete / keys / size) so an
S3-compatible store can implement it.  :class:`FileBlobStore` writes atomically: a temporary
file in the target folder, ``fsync``, ``rename``, then ``fsync`` of the folder — a crash leaves
either the whole blob or nothing under its key (plus, at worst, a ``.tmp`` file that
:meth:`FileBlobStore.sweep_temp` removes).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from hounsfield.errors import NotFound, OutOfResources


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, *, sync_dir: bool = True) -> None: ...
    def sync(self, keys: Iterable[str]) -> None: ...
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


class FileBlobStore:
    """Blobs as files under ``root``; durable when ``fsync`` is on (the default)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise NotFound(f"blob key outside the store: {key!r}")
        return p

    def put(self, key: str, data: bytes, *, sync_dir: bool = True) -> None:
        """Write ``data`` under ``key`` atomically.  With ``sync_dir=False`` the caller must
        :meth:`sync` the keys before relying on them (lets a batch share directory fsyncs)."""
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
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutOfResources(f"cannot write blob {key}: {exc.strerror or exc}") from exc
        if self.fsync and sync_dir:
            _fsync_dir(folder)
            if created:  # the new folder's own entry must be durable too
                _fsync_dir(folder.parent)
                _fsync_dir(folder.parent.parent)

    def sync(self, keys: Iterable[str]) -> None:
        """Make the directory entries of ``keys`` (and their folders) durable: one fsync per
        distinct folder."""
        if not self.fsync:
            return
        folders = {self.path(k).parent for k in keys}
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
