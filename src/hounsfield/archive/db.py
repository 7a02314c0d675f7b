"""Engines and sessions for the index DB: SQLite (WAL) by default, PostgreSQL given a URL.

SQLite gets WAL, ``synchronous=FULL`` (a commit is durable once it returns), a busy timeout,
and writer sessions that ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing
mid-transaction.  Readers use ordinary deferred transactions and never block writers.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, immediate: bool = False, relaxed: bool = False) -> Engine:
    """An engine for ``url``.  ``immediate`` makes every SQLite transaction a write transaction.

    ``relaxed``: commits do not wait for the log to reach the disk (SQLite
    ``synchronous=NORMAL`` in WAL mode, PostgreSQL ``synchronous_commit=off``).  A process
    crash loses nothing; a power loss may lose the last commits, so a caller using it keeps
    what it committed recoverable (a journal) until a later checkpoint (:func:`checkpoint`)."""
    if is_sqlite(url):
        db = make_url(url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False, "isolation_level": None},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL" if relaxed else "PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            # DICOM wildcard matching is case-sensitive except for PN (matched on lower());
            # SQLite's LIKE is case-insensitive for ASCII unless told otherwise (PostgreSQL's
            # is not): without this, C-FIND/QIDO answers differed between the two databases
            cur.execute("PRAGMA case_sensitive_like=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if relaxed:
        @event.listens_for(engine, "begin")
        def _async_commit(conn):  # noqa: ANN001
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    return engine


def checkpoint(engine: Engine) -> None:
    """Make every commit so far durable: SQLite syncs its WAL before a checkpoint; on
    PostgreSQL a synchronous commit that writes a commit record flushes the log up to it."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()  # autocommit (isolation_level=None): no BEGIN around it
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            raw.close()
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO ON")
        conn.exec_driver_sql("SELECT pg_current_xact_id()")
        conn.commit()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
