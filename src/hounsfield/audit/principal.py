"""Who is calling and what their role allows: roles, permissions (as data) and the
:class:`Principal` every authenticated request and association carries.

Below every door (DICOMweb, the web API and console, DIMSE): the doors check permissions and the
audit trail records the principal; how a principal is proved (passwords, sessions, tokens) is
``hounsfield.web.auth``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    ANNOTATOR = "annotator"
    DATA_SCIENTIST = "data-scientist"
    SERVICE = "service"


class Permission(StrEnum):
    READ = "studies:read"  # QIDO, WADO, console study pages, OHIF
    WRITE = "studies:write"  # STOW (results, annotations, imports)
    EXPORT = "studies:export"
    AUDIT = "audit:read"
    USERS = "users:manage"
    AI_RUN = "ai:run"  # ask for AI on a study, retry / cancel AI jobs


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.RADIOLOGIST: frozenset({Permission.READ, Permission.WRITE, Permission.EXPORT,
                                 Permission.AI_RUN}),
    Role.ANNOTATOR: frozenset({Permission.READ, Permission.WRITE}),
    Role.DATA_SCIENTIST: frozenset({Permission.READ, Permission.EXPORT}),
    Role.SERVICE: frozenset({Permission.READ, Permission.WRITE, Permission.AI_RUN}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, their role, and how they proved it (``session``/``token``)."""

    user_id: int
    username: str
    role: Role
    method: str

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]
