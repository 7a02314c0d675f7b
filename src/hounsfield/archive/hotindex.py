"""The index's hot path: new instances of series already indexed, on the DB-API cursor (SQLite).

Nearly every instance a modality sends belongs to a series whose first instance created the
patient, study and series rows.  For that case the whole commit is five statements — is any of
these SOP instances stored already, the series' keys, insert the instances, touch the series and
study — and SQLAlchemy's per-statement work (compiled-cache lookup, parameter processing,
result wrapping, the ``begin`` event) cost several times what SQLite spends running them.  Here
they run as plain SQL on the driver's cursor, with the parameters converted by the columns'
own SQLAlchemy bind processors (so a row reads back exactly as one written through Core).

Anything else — an instance stored already (duplicate, conflict, replace), a series not yet
indexed, a constraint failure, PostgreSQL — returns ``None`` and the caller takes the general
path (:func:`hounsfield.archive.store._index`), which decides every case.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any
import weakref
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, Table

from hounsfield.archive.models import Instance, Series, Study
from hounsfield.errors import OutOfResources

_CACHE: WeakKeyDictionary[Engine, HotIndex] = WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def hot_index(engine: Engine) -> HotIndex | None:
    """The hot path for ``engine`` (built once per engine); ``None`` unless it is SQLite."""
    if engine.dialect.name != "sqlite":
        return None
    with _CACHE_LOCK:
        hot = _CACHE.get(engine)
        if hot is None:
            hot = _CACHE[engine] = HotIndex(engine)
        return hot


def _in(n: int) -> str:
    return "(" + ",".join("?" * n) + ")"


class _Columns:
    """A table's insertable columns: quoted names, bind processors, defaults, string lengths."""

    def __init__(self, table: Table, engine: Engine) -> None:
        d = engine.dialect
        q = d.identifier_preparer.quote
        self.cols = [c for c in table.columns if not c.primary_key]
        self.names = [c.name for c in self.cols]
        self.sql = (f"INSERT INTO {q(table.name)} ({', '.join(q(n) for n in self.names)}) "
                    f"VALUES {_in(len(self.cols))}")
        self.process = [c.type.dialect_impl(d).bind_processor(d) for c in self.cols]
        self.length = [getattr(c.type, "length", None) for c in self.cols]
        self.default: list[tuple[bool, Any]] = []  # (has a scalar default or is nullable, value)
        for c in self.cols:
            if c.default is not None and c.default.is_scalar:
                self.default.append((True, c.default.arg))
            else:
                self.default.append((bool(c.nullable), None))

    def row(self, values: dict[str, Any]) -> tuple | None:
        """The parameters of one row; ``None`` when a column without a value has no default."""
        out = []
        for name, proc, length, (has, dflt) in zip(self.names, self.process, self.length,
                                                   self.default, strict=True):
            if name in values:
                v = values[name]
            elif has:
                v = dflt
            else:
                return None
            if length and isinstance(v, str) and len(v) > length:
                v = v[:length]  # as store._fit: clipped to the column
            out.append(proc(v) if proc is not None and v is not None else v)
        return tuple(out)


class HotIndex:
    """The five statements of the common commit, prepared for one SQLite engine, run on one
    connection it holds (returned to the engine's pool when the engine goes)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # the cache entry must not keep its key alive
        self.commits = 0  # transactions this path committed
        self._lock = threading.Lock()  # one connection, one transaction at a time
        self._raw: Any = None
        d = engine.dialect
        q = d.identifier_preparer.quote
        self.instance = _Columns(Instance.__table__, engine)
        self.ts = Series.__table__.c.last_received_at.type.dialect_impl(d).bind_processor(d)
        self.t_instance, self.t_series, self.t_study = (q(t.name) for t in (
            Instance.__table__, Series.__table__, Study.__table__))

    def insert(self, rows: Sequence[dict[str, Any]], series_uids: Sequence[str],
               now: datetime) -> bool:
        """Insert ``rows`` (instance column values without ``series_pk``; ``series_uids[i]`` is
        row i's series) and touch their series and studies in one transaction.  ``False``, with
        nothing written, when this is not the hot case (an instance stored already, a series not
        indexed yet, a UID twice in ``rows``, a constraint failure)."""
        uids = [r["sop_instance_uid"] for r in rows]
        if len(set(uids)) != len(uids):
            return False
        wanted = sorted(set(series_uids))
        with self._lock:
            return self._insert(rows, uids, series_uids, wanted, now)

    def _insert(self, rows: Sequence[dict[str, Any]], uids: list[str],
                series_uids: Sequence[str], wanted: list[str], now: datetime) -> bool:
        if self._raw is None:  # held, not checked out per commit (the pool's cost showed)
            engine = self._engine()
            if engine is None:
                return False
            self._raw = engine.raw_connection()
        try:
            cur = self._raw.driver_connection.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                done = self._run(cur, rows, uids, series_uids, wanted, now)
            except sqlite3.IntegrityError:
                done = False
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT" if done else "ROLLBACK")
            self.commits += done
            return done
        except sqlite3.OperationalError as exc:
            self._raw.close()  # whatever state it is in, the next commit starts afresh
            self._raw = None
            raise OutOfResources(f"index database refused the write: {exc}") from exc

    def _run(self, cur: sqlite3.Cursor, rows: Sequence[dict[str, Any]], uids: list[str],
             series_uids: Sequence[str], wanted: list[str], now: datetime) -> bool:
        if cur.execute(f"SELECT 1 FROM {self.t_instance} WHERE sop_instance_uid IN "
                       f"{_in(len(uids))} LIMIT 1", uids).fetchone():
            return False
        pks = dict(cur.execute(f"SELECT series_instance_uid, id FROM {self.t_series} "
                               f"WHERE series_instance_uid IN {_in(len(wanted))}", wanted))
        if len(pks) != len(wanted):
            return False
        params = []
        for r, s in zip(rows, series_uids, strict=True):
            p = self.instance.row({**r, "series_pk": pks[s]})
            if p is None:
                return False
            params.append(p)
        cur.executemany(self.instance.sql, params)
        ids = list(pks.values())
        stamp = self.ts(now) if self.ts is not None else now
        cur.execute(f"UPDATE {self.t_series} SET last_received_at = ? WHERE id IN "
                    f"{_in(len(ids))}", [stamp, *ids])
        cur.execute(f"UPDATE {self.t_study} SET last_received_at = ? WHERE id IN (SELECT "
                    f"study_pk FROM {self.t_series} WHERE id IN {_in(len(ids))})", [stamp, *ids])
        return True
