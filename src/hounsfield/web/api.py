"""``/api``: login/logout, the caller, users and tokens (admins), and the audit trail.

Every route needs a principal except ``/api/health`` and ``/api/auth/login`` (allow-listed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from hounsfield.audit import Action, Entry, Outcome
from hounsfield.audit import query as audit_query
from hounsfield.errors import InvalidInput, Unauthenticated
from hounsfield.web import auth
from hounsfield.web.deps import ArchiveDep, Auditor, CurrentUser, UserAdmin, client_address

router = APIRouter(prefix="/api", tags=["API"])


class LoginRequest(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class UserPublic(BaseModel):
    username: str
    role: str
    full_name: str = ""
    active: bool = True


class UserCreate(BaseModel):
    username: str = Field(max_length=64)
    role: auth.Role
    password: str | None = Field(default=None, max_length=1024)
    full_name: str = Field(default="", max_length=128)


class TokenCreate(BaseModel):
    name: str = Field(default="", max_length=64)
    days: float | None = Field(default=None, gt=0, le=3650)


class TokenPublic(BaseModel):
    token: str = Field(description="the bearer token; shown only now")
    prefix: str
    expires_at: datetime | None


class AuditEventPublic(BaseModel):
    occurred_at: datetime
    action: str
    event_id: str
    event_action: str
    outcome: int
    actor: str
    role: str
    source: str
    destination: str
    study_instance_uid: str
    patient_id: str
    detail: str


def login_and_audit(request: Request, username: str, password: str) -> tuple[str, auth.User]:
    """Check a password login, start a session and record the attempt either way."""
    archive = request.app.state.archive
    writer = request.app.state.audit
    source = client_address(request)
    try:
        user = auth.verify_password(archive, username, password)
    except Unauthenticated:
        writer.add(Entry(Action.LOGIN, actor=username[:128] or "(empty)", source=source,
                         outcome=Outcome.SERIOUS_FAILURE, detail="password login failed"))
        raise
    value = auth.start_session(archive, user, source=source)
    writer.add(Entry(Action.LOGIN, actor=user.username, role=user.role, source=source,
                     detail="password login"))
    return value, user


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    settings = request.app.state.archive.settings
    response.set_cookie(auth.SESSION_COOKIE, value, httponly=True, samesite="lax",
                        secure=settings.web.cookie_secure, path="/",
                        max_age=int(settings.web.session_hours * 3600))


@router.get("/health", summary="liveness (no authentication)")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/auth/login", response_model=UserPublic, summary="password login; sets a session cookie")
def login(body: LoginRequest, request: Request, response: Response) -> UserPublic:
    value, user = login_and_audit(request, body.username, body.password)
    set_session_cookie(request, response, value)
    return UserPublic(username=user.username, role=user.role, full_name=user.full_name)


@router.post("/auth/logout", summary="end the session of this cookie")
def logout(request: Request, response: Response, user: CurrentUser) -> dict[str, str]:
    value = request.cookies.get(auth.SESSION_COOKIE)
    if value:
        auth.end_session(request.app.state.archive, value)
    request.app.state.audit.add(Entry(Action.LOGOUT, actor=user.username, role=user.role.value,
                                      source=client_address(request)))
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return {"status": "logged out"}


@router.get("/me", response_model=UserPublic, summary="the caller")
def me(user: CurrentUser) -> UserPublic:
    return UserPublic(username=user.username, role=user.role.value)


@router.get("/users", response_model=list[UserPublic], summary="all users (admins)")
def users(archive: ArchiveDep, admin: UserAdmin) -> list[UserPublic]:
    return [UserPublic(username=u.username, role=u.role, full_name=u.full_name, active=u.active)
            for u in auth.list_users(archive)]


@router.post("/users", response_model=UserPublic, status_code=201, summary="add a user (admins)")
def add_user(body: UserCreate, archive: ArchiveDep, admin: UserAdmin) -> UserPublic:
    u = auth.create_user(archive, body.username, body.role.value, body.password,
                         full_name=body.full_name)
    return UserPublic(username=u.username, role=u.role, full_name=u.full_name)


@router.post("/tokens", response_model=TokenPublic, status_code=201,
             summary="a new API token for the caller")
def new_token(body: TokenCreate, archive: ArchiveDep, user: CurrentUser) -> TokenPublic:
    secret, token = auth.issue_token(archive, user.username, name=body.name, days=body.days)
    return TokenPublic(token=secret, prefix=token.prefix, expires_at=token.expires_at)


@router.get("/audit", response_model=list[AuditEventPublic], summary="the audit trail (admins)")
def audit(
    request: Request, archive: ArchiveDep, admin: Auditor,
    action: Annotated[str | None, Query(max_length=32)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    study_instance_uid: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[int | None, Query(ge=0, le=12)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 200,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[AuditEventPublic]:
    if action is not None and action not in {a.value for a in Action}:
        raise InvalidInput(f"unknown action {action!r}; one of {', '.join(a.value for a in Action)}")
    request.app.state.audit.flush()
    filters = {"action": action, "actor": actor, "study_instance_uid": study_instance_uid,
               "outcome": None if outcome is None else str(outcome)}
    with archive.session() as s:
        rows = audit_query(s, {k: v for k, v in filters.items() if v is not None},
                           since=since, until=until, limit=limit, offset=offset)
        return [AuditEventPublic.model_validate(r, from_attributes=True) for r in rows]
