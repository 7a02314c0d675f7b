"""FastAPI dependencies (``Annotated`` aliases) shared by every HTTP route: DICOMweb's and the
web layer's (API, console, viewer), which re-exports them from ``hounsfield.web.deps``.

Routes never reach for globals: the archive, the settings and the caller come in as
dependencies (``ArchiveDep``, ``SettingsDep``, ``CurrentUser``, ``require(Permission.X)``).  The
caller is found by the authenticators the app holds (``app.state.authenticators``, built by
``hounsfield.web``), so this module needs no more of the web layer than that duck type.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hounsfield.archive.archive import Archive
from hounsfield.config import Settings
from hounsfield.errors import PermissionDenied, Unauthenticated
from hounsfield.audit.principal import Permission, Principal


def get_archive(request: Request) -> Archive:
    return request.app.state.archive


def get_settings(request: Request) -> Settings:
    return request.app.state.archive.settings


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def optional_principal(request: Request) -> Principal | None:
    """The caller, or None when no credential was sent (a bad credential is still a 401)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    for authenticator in request.app.state.authenticators:
        principal = authenticator.authenticate(request)
        if principal is not None:
            request.state.principal = principal
            return principal
    return None


def current_principal(request: Request) -> Principal:
    principal = optional_principal(request)
    if principal is None:
        raise Unauthenticated(
            "authentication required: log in, or send 'Authorization: Bearer <token>'"
        )
    return principal


ArchiveDep = Annotated[Archive, Depends(get_archive)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentUser = Annotated[Principal, Depends(current_principal)]
MaybeUser = Annotated[Principal | None, Depends(optional_principal)]


def require(permission: Permission):  # noqa: ANN201 - a FastAPI dependency
    """A dependency that lets the request through only for roles holding ``permission``."""

    def check(principal: CurrentUser) -> Principal:
        if not principal.can(permission):
            raise PermissionDenied(
                f"role {principal.role.value!r} lacks the permission {permission.value!r}"
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require(Permission.READ))]
Writer = Annotated[Principal, Depends(require(Permission.WRITE))]
Auditor = Annotated[Principal, Depends(require(Permission.AUDIT))]
UserAdmin = Annotated[Principal, Depends(require(Permission.USERS))]
AiOperator = Annotated[Principal, Depends(require(Permission.AI_RUN))]
