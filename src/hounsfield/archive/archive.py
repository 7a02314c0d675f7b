"""The :class:`Archive` handle: settings + index engines + blob store, opened once, passed in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from hounsfield.archive import migrate
from hounsfield.archive.blobstore import BlobStore, FileBlobStore
from hounsfield.archive.db import is_sqlite, make_engine, make_sessionmaker
from hounsfield.config import Settings


@dataclass
class Archive:
    settings: Settings
    engine: Engine
    write_engine: Engine
    blobs: BlobStore
    _read: sessionmaker[Session]
    _write: sessionmaker[Session]

    @classmethod
    def open(cls, settings: Settings, *, upgrade: bool = True) -> Archive:
        """Open (creating on first use) the archive the settings describe."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.index_url
        engine = make_engine(url)
        write_engine = make_engine(url, immediate=True) if is_sqlite(url) else engine
        if upgrade:
            migrate.upgrade(write_engine)
        blobs = FileBlobStore(settings.blob_dir, fsync=settings.fsync)
        return cls(settings, engine, write_engine, blobs,
                   make_sessionmaker(engine), make_sessionmaker(write_engine))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (deferred transactions: never blocks writers)."""
        with self._read() as s:
            yield s

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A write session; on SQLite its transactions take the write lock at BEGIN."""
        with self._write() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
