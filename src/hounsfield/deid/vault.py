"""The pseudonym vault: original <-> pseudonym, encrypted at rest; admin-only re-identification.

Originals are stored as Fernet tokens (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under a
key derived (HKDF-SHA256) from ``settings.deid.vault_key``; pseudonyms stay in clear so they can
be looked up.  :func:`reidentify` takes the acting user: only the ``admin`` role is granted, and
every attempt — granted, denied or not found — is recorded in ``deid_reidentification``.  The web
layer that authenticates users passes its ``Actor`` in; this module enforces the role itself so
no caller can skip the check.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select

from hounsfield.config import Settings
from hounsfield.deid.models import Pseudonym, Reidentification
from hounsfield.errors import ConfigurationError, NotFound, PermissionDenied

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Actor:
    """Who asks (as authenticated by the caller), with their roles and where from."""

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    client: str = ""


def vault_key(settings: Settings) -> bytes:
    """The Fernet key; the demo profile derives one from the (demo) secret."""
    secret = settings.deid.vault_key
    if not secret:
        if settings.profile != "demo":
            raise ConfigurationError("no deid.vault_key configured: set HOUNSFIELD_DEID__VAULT_KEY "
                                     "(a long random secret) to keep pseudonyms re-identifiable")
        secret = "vault:" + settings.require_secret()
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"hounsfield-deid-vault",
               info=b"fernet").derive(secret.encode())
    return base64.urlsafe_b64encode(raw)


def uid_key(settings: Settings) -> bytes:
    """The key of UID remapping, pseudonyms and date shifts (stable across runs)."""
    return (settings.deid.uid_key or settings.require_secret()).encode()


class Vault:
    def __init__(self, archive) -> None:  # noqa: ANN001 - hounsfield.archive.Archive
        self.archive = archive
        self._fernet = Fernet(vault_key(archive.settings))

    def record(self, kind: str, pseudonym: str, original: dict[str, str], *,
               patient_pseudonym: str = "", profile: str = "") -> None:
        """Remember ``pseudonym`` -> ``original`` (idempotent: the first record is kept)."""
        token = self._fernet.encrypt(json.dumps(original, sort_keys=True).encode()).decode()
        with self.archive.write_session() as s:
            exists = s.scalar(select(Pseudonym.id).where(Pseudonym.kind == kind,
                                                         Pseudonym.pseudonym == pseudonym))
            if exists is None:
                s.add(Pseudonym(kind=kind, pseudonym=pseudonym, original_encrypted=token,
                                patient_pseudonym=patient_pseudonym, profile=profile[:256]))
                s.commit()

    def reidentify(self, pseudonym: str, actor: Actor, *, kind: str = "patient",
                   reason: str = "") -> dict[str, str]:
        """The original behind ``pseudonym``; admins only; every attempt is audited."""
        if ADMIN_ROLE not in actor.roles:
            self._audit(actor, kind, pseudonym, "denied", reason or "actor is not an admin")
            raise PermissionDenied("re-identification requires the admin role")
        with self.archive.session() as s:
            row = s.scalar(select(Pseudonym).where(Pseudonym.kind == kind,
                                                   Pseudonym.pseudonym == pseudonym))
            token = row.original_encrypted if row else None
        if token is None:
            self._audit(actor, kind, pseudonym, "not-found", reason)
            raise NotFound(f"no {kind} pseudonym {pseudonym} in the vault")
        try:
            original = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            self._audit(actor, kind, pseudonym, "denied", "vault key does not decrypt the record")
            raise ConfigurationError("the vault key does not decrypt this record "
                                     "(deid.vault_key changed?)") from exc
        self._audit(actor, kind, pseudonym, "granted", reason)
        return original

    def audit_log(self, *, limit: int = 100) -> list[Reidentification]:
        with self.archive.session() as s:
            return list(s.scalars(select(Reidentification)
                                  .order_by(Reidentification.id.desc()).limit(limit)))

    def _audit(self, actor: Actor, kind: str, pseudonym: str, outcome: str, reason: str) -> None:
        from hounsfield.audit.trail import Action, Entry, Outcome, record

        record(self.archive, Entry(
            action=Action.REIDENTIFY, actor=actor.name, role=",".join(sorted(actor.roles)),
            outcome=Outcome.SUCCESS if outcome == "granted" else Outcome.MAJOR_FAILURE,
            source=actor.client, detail=f"{kind} {pseudonym}: {outcome}" + (f" ({reason})" if reason else "")))
        with self.archive.write_session() as s:
            s.add(Reidentification(actor=actor.name[:128], roles=",".join(sorted(actor.roles))[:256],
                                   client=actor.client[:256], kind=kind, pseudonym=pseudonym[:128],
                                   outcome=outcome, reason=reason[:512]))
            s.commit()
