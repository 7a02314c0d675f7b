"""Imports every module that defines tables, so Alembic and tests see the whole schema.

Each feature package that adds tables adds one import line here.
"""

from hounsfield.archive import models  # noqa: F401
from hounsfield.audit import models as audit_models  # noqa: F401
from hounsfield.web import models as web_models  # noqa: F401
from hounsfield.deid import models as _deid_models  # noqa: F401
from hounsfield.ingest import models as ingest_models  # noqa: F401
from hounsfield.pacs import models as pacs_models  # noqa: F401
from hounsfield.deploy import models as deploy_models  # noqa: F401
