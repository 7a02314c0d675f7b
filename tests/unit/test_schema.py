"""The whole schema (hounsfield.schema, top level) against the migrations (archive layer): the
version scripts build exactly the tables the classes define, and autogenerate sees every table
module only when it is handed the whole schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util import CommandError

import hounsfield.schema as schema
from hounsfield.archive import migrate


@pytest.fixture()
def db(tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate.upgrade(engine)
    return engine


def test_every_table_module_is_in_the_schema() -> None:
    names = set(schema.metadata.tables)
    # one table of each package that defines tables
    assert {"instance", "audit_event", "deid_pseudonym", "stable_event", "delivery",
            "web_user"} <= names


def test_the_migrations_match_the_table_classes(db: sa.Engine) -> None:
    assert schema.differences(db) == []


def test_a_table_the_migrations_lack_is_a_difference(db: sa.Engine) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE deid_reidentification"))
    diffs = schema.differences(db)
    assert any(d[0] == "add_table" and d[1].name == "deid_reidentification" for d in diffs)


def test_autogenerate_needs_the_whole_schema(db: sa.Engine) -> None:
    cfg = migrate.alembic_config(str(db.url))
    with pytest.raises(CommandError, match="MetaData"):  # not shown the tables: it stops
        command.check(cfg)
    cfg.attributes["target_metadata"] = schema.metadata
    command.check(cfg)  # shown them: nothing to generate
