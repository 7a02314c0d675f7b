"""The archive: index DB (SQLAlchemy) + blob store (the exact Part 10 bytes of each instance).

Open it with :meth:`Archive.open`; every other stage reads and writes through it.
"""

from hounsfield.archive.archive import Archive
from hounsfield.archive.models import Instance, Patient, Series, Study

__all__ = ["Archive", "Instance", "Patient", "Series", "Study"]
