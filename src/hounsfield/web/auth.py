"""Users, roles and credentials: argon2id passwords, cookie sessions, bearer API tokens.

Roles and what they may do are data (:data:`ROLE_PERMISSIONS`).  Authentication is a chain of
:class:`Authenticator` objects tried in order (bearer token, then session cookie); an OIDC
authenticator can be appended without touching the routes, which only see a :class:`Principal`.

Secrets are random values held by the client; the index keeps their SHA-256 digests only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from starlette.requests import HTTPConnection

from hounsfield.archive.archive import Archive
from hounsfield.audit.principal import (  # noqa: F401 - auth.Role etc. stay importable
    ROLE_PERMISSIONS, Permission, Principal, Role)
from hounsfield.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from hounsfield.web.models import ApiToken, LoginSession, User

SESSION_COOKIE = "hf_session"
TOKEN_PREFIX = "hf_"
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory profile)
# a hash to verify against when the user does not exist, so timing does not reveal names
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


def validate_username(name: str) -> tuple[bool, str]:
    if not _USERNAME_RE.match(name or ""):
        return False, ("user names are 1-64 characters: letters, digits and . _ @ -, "
                       "starting with a letter or digit")
    return True, ""


def validate_role(role: str) -> tuple[bool, str]:
    if role not in {r.value for r in Role}:
        return False, f"unknown role {role!r}; one of: {', '.join(r.value for r in Role)}"
    return True, ""


def validate_password(password: str) -> tuple[bool, str]:
    if len(password) < 8:
        return False, "passwords need at least 8 characters"
    return True, ""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were stored as UTC
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


# -- user management ------------------------------------------------------------------------

def create_user(archive: Archive, username: str, role: str, password: str | None, *,
                full_name: str = "", check_password: bool = True) -> User:
    """Create a user.  ``password`` None makes a token-only account (e.g. a service)."""
    for ok, why in (validate_username(username), validate_role(role)):
        if not ok:
            raise InvalidInput(why)
    if password is not None and check_password:
        ok, why = validate_password(password)
        if not ok:
            raise InvalidInput(why)
    with archive.write_session() as s, s.begin():
        if s.scalar(select(User).where(User.username == username)) is not None:
            raise Conflict(f"user {username!r} already exists")
        user = User(username=username, role=role, full_name=full_name[:128],
                    password_hash=_HASHER.hash(password) if password is not None else None)
        s.add(user)
        s.flush()
        return user


def list_users(archive: Archive) -> list[User]:
    with archive.session() as s:
        return list(s.scalars(select(User).order_by(User.username)))


def get_user(archive: Archive, username: str) -> User:
    with archive.session() as s:
        user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def set_password(archive: Archive, username: str, password: str) -> None:
    ok, why = validate_password(password)
    if not ok:
        raise InvalidInput(why)
    with archive.write_session() as s, s.begin():
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user {username!r}")
        user.password_hash = _HASHER.hash(password)
        s.execute(delete(LoginSession).where(LoginSession.user_id == user.id))


def ensure_demo_admin(archive: Archive) -> bool:
    """Demo profile only: create the demo admin (password = its name) if no user exists yet."""
    settings = archive.settings
    if settings.profile != "demo":
        return False
    with archive.session() as s:
        if s.scalar(select(User.id).limit(1)) is not None:
            return False
    name = settings.web.demo_user
    try:
        create_user(archive, name, Role.ADMIN, name, full_name="Demo administrator",
                    check_password=False)
    except Conflict:
        return False
    return True


# -- passwords and sessions -----------------------------------------------------------------

def verify_password(archive: Archive, username: str, password: str) -> User:
    """The active user whose password this is; :class:`Unauthenticated` otherwise."""
    with archive.session() as s:
        user = s.scalar(select(User).where(User.username == username))
    stored = user.password_hash if user is not None and user.active else None
    try:
        _HASHER.verify(stored or _DUMMY_HASH, password)
        good = stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        good = False
    if not good or user is None:
        raise Unauthenticated("wrong user name or password")
    return user


def start_session(archive: Archive, user: User, *, source: str = "") -> str:
    """Create a browser session; returns the cookie value (shown once, stored hashed)."""
    value = secrets.token_urlsafe(32)
    now = _now()
    ttl = timedelta(hours=archive.settings.web.session_hours)
    with archive.write_session() as s, s.begin():
        s.add(LoginSession(user_id=user.id, session_hash=_digest(value), created_at=now,
                           expires_at=now + ttl, source=source[:256]))
        row = s.get(User, user.id)
        if row is not None:
            row.last_login_at = now
        s.execute(delete(LoginSession).where(LoginSession.expires_at < now))
    return value


def end_session(archive: Archive, value: str) -> None:
    with archive.write_session() as s, s.begin():
        s.execute(delete(LoginSession).where(LoginSession.session_hash == _digest(value)))


def session_principal(archive: Archive, value: str) -> Principal:
    with archive.session() as s:
        row = s.execute(
            select(LoginSession.expires_at, User)
            .join(User, User.id == LoginSession.user_id)
            .where(LoginSession.session_hash == _digest(value))
        ).first()
    if row is None:
        raise Unauthenticated("session unknown or logged out; log in again")
    expires, user = row
    if _aware(expires) < _now():
        raise Unauthenticated("session expired; log in again")
    if not user.active:
        raise Unauthenticated("account disabled")
    return Principal(user.id, user.username, Role(user.role), "session")


# -- API tokens -----------------------------------------------------------------------------

def issue_token(archive: Archive, username: str, *, name: str = "",
                days: float | None = None) -> tuple[str, ApiToken]:
    """A new bearer token for ``username``; the secret is returned once and stored hashed."""
    user = get_user(archive, username)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    days = archive.settings.web.token_days if days is None else days
    if days <= 0:
        raise InvalidInput("token lifetime must be positive (days)")
    now = _now()
    with archive.write_session() as s, s.begin():
        token = ApiToken(user_id=user.id, name=name[:64], token_hash=_digest(secret),
                         prefix=secret[:10], created_at=now, expires_at=now + timedelta(days=days))
        s.add(token)
        s.flush()
    return secret, token


def revoke_token(archive: Archive, prefix: str) -> int:
    with archive.write_session() as s, s.begin():
        rows = list(s.scalars(select(ApiToken).where(ApiToken.prefix == prefix)))
        for t in rows:
            t.revoked = True
    return len(rows)


def token_principal(archive: Archive, secret: str) -> Principal:
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        raise Unauthenticated("malformed API token")
    with archive.session() as s:
        row = s.execute(
            select(ApiToken.expires_at, ApiToken.revoked, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == _digest(secret))
        ).first()
    if row is None:
        raise Unauthenticated("unknown API token")
    expires, revoked, user = row
    if revoked:
        raise Unauthenticated("API token revoked")
    if expires is not None and _aware(expires) < _now():
        raise Unauthenticated("API token expired")
    if not user.active:
        raise Unauthenticated("account disabled")
    return Principal(user.id, user.username, Role(user.role), "token")


# -- the authenticator chain ----------------------------------------------------------------

class Authenticator(Protocol):
    """Finds a principal in a request.  Returns None when its kind of credential is absent,
    raises :class:`Unauthenticated` when the credential is present but not valid."""

    def authenticate(self, conn: HTTPConnection) -> Principal | None: ...


class BearerTokenAuthenticator:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        header = conn.headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <token>'")
        return token_principal(self.archive, value.strip())


class SessionCookieAuthenticator:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        value = conn.cookies.get(SESSION_COOKIE)
        if not value:
            return None
        return session_principal(self.archive, value)


def default_authenticators(archive: Archive) -> list[Authenticator]:
    return [BearerTokenAuthenticator(archive), SessionCookieAuthenticator(archive)]
