"""Alembic environment: uses the connection handed in by hounsfield.archive.migrate."""

from alembic import context
from sqlalchemy import create_engine

from hounsfield.archive.models import Base

import hounsfield.archive.schema  # noqa: F401  (registers every table on Base.metadata)

target_metadata = Base.metadata
config = context.config


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as conn:
            _run(conn)
    else:
        _run(conn)


def _run(conn) -> None:  # noqa: ANN001
    context.configure(
        connection=conn, target_metadata=target_metadata, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


run()
