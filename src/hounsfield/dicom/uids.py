"""UID helpers (PS3.5 §9, Annex B).

Output UIDs are derived deterministically from their inputs (``2.25.<int of a hash>``, PS3.5
§B.2), so retried work overwrites instead of duplicating.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def validate_uid(value: object) -> tuple[bool, str]:
    """``(ok, reason)`` for a UID value (PS3.5 §9.1: digits and dots, <= 64 chars)."""
    if not isinstance(value, str) or not value:
        return False, "empty"
    if len(value) > 64:
        return False, f"longer than 64 characters ({len(value)})"
    if not _UID_RE.match(value):
        return False, f"not a valid UID: {value!r}"
    return True, ""


def is_lenient_uid(value: object) -> bool:
    """Real devices send UIDs with leading zeros in components; accept those when reading."""
    return isinstance(value, str) and 0 < len(value) <= 64 and all(
        c.isdigit() or c == "." for c in value
    ) and not value.startswith(".") and not value.endswith(".") and ".." not in value


def derived_uid(*parts: str, key: bytes | None = None) -> str:
    """A deterministic ``2.25`` UID from ``parts`` (optionally keyed with HMAC-SHA256).

    The same inputs always give the same UID; 128 bits of the digest keep it within 64 chars.
    """
    msg = "\x1f".join(parts).encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest() if key else hashlib.sha256(msg).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))
