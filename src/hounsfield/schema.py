"""The whole index schema: every module that defines tables, for Alembic's autogenerate and for
checks that the table classes match the migrations.

``hounsfield.archive`` is the data layer and imports nothing above it, so it cannot list the
tables that packages above it define (audit, de-identification, ingest, PACS delivery, web
users); this top-level module does.  Upgrading needs none of it: the version scripts under
``archive/migrations/versions`` are explicit.  Each feature package that adds tables adds one
import line here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, MetaData

from hounsfield.archive import models as archive_models
from hounsfield.audit import models as audit_models  # noqa: F401
from hounsfield.deid import models as deid_models  # noqa: F401
from hounsfield.deploy import models as deploy_models  # noqa: F401
from hounsfield.ingest import commitment_models  # noqa: F401
from hounsfield.ingest import models as ingest_models  # noqa: F401
from hounsfield.pacs import models as pacs_models  # noqa: F401
from hounsfield.pacs import preflight_models  # noqa: F401
from hounsfield.web import models as web_models  # noqa: F401

#: every table Hounsfield defines
metadata: MetaData = archive_models.Base.metadata


def differences(engine: Engine) -> list[Any]:
    """What autogenerate would write for ``engine``'s database: the differences between its
    schema and the table classes (Alembic's ``compare_metadata``; empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"render_as_batch": True}),
                                metadata)


def autogenerate(url: str, message: str) -> Any:
    """``alembic revision --autogenerate -m MESSAGE`` against the database at ``url`` (upgraded
    to the heads first): a new version script from the table classes' differences."""
    from alembic import command

    from hounsfield.archive.migrate import alembic_config

    cfg = alembic_config(url)
    cfg.attributes["target_metadata"] = metadata
    return command.revision(cfg, message=message, autogenerate=True)
