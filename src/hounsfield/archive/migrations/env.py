"""Alembic environment: uses the connection handed in by hounsfield.archive.migrate.

The version scripts are explicit, so upgrading needs no table classes.  Autogenerate compares
against ``config.attributes["target_metadata"]``, which :func:`hounsfield.schema.autogenerate`
hands in with every table module imported (the archive layer imports nothing above it); without
it, autogenerate stops rather than propose dropping the tables it was not shown.
"""

from alembic import context
from sqlalchemy import create_engine

config = context.config
target_metadata = config.attributes.get("target_metadata")


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
