"""Deterministic UIDs of the result objects (PS3.5 §B.2 "2.25." UUID-derived form).

Every result UID is derived from what the result depends on — the input series' content, the
model (name, version, Device UID) and the object kind — so a re-run on the same input with the
same model gives the same UIDs (a PACS receives a duplicate, not a second set), and a new model
version or changed input gives new ones. The Study Instance UID stays the source study's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from hounsfield.dicom.uids import derived_uid, validate_uid
from hounsfield.errors import InvalidInput

NAMESPACE = "hounsfield-results"


def series_content_key(pairs: Iterable[tuple[str, str]]) -> str:
    """The content key of an input series: SHA-256 (hex) over its ``(sop_instance_uid, sha256)``
    pairs, sorted (so the order instances arrived in does not matter). ``sha256`` is the
    archive's hash of each instance's bytes (``Instance.sha256``)."""
    items = sorted((str(s), str(h)) for s, h in pairs)
    if not items:
        raise InvalidInput("series_content_key needs at least one (sop_instance_uid, sha256) pair")
    seen = set()
    h = hashlib.sha256()
    for sop, digest in items:
        ok, why = validate_uid(sop)
        if not ok:
            raise InvalidInput(f"SOP Instance UID {sop!r}: {why}")
        if sop in seen:
            raise InvalidInput(f"SOP Instance UID {sop} appears twice in the series content")
        seen.add(sop)
        h.update(f"{sop}\x1f{digest}\n".encode())
    return h.hexdigest()


def derive_uid(input_key: str, model_key: str, kind: str, *extra: str) -> str:
    """``2.25.<first 128 bits of SHA-256>`` of (input key, model key, kind, extra...).

    ``model_key`` is :attr:`AIModel.key` (``name@version:device_uid``); ``kind`` names the object
    or item ("SEG", "SR", "SC-1", "series-SEG", "tracking", ...). The result is at most 44
    characters, a valid UID (PS3.5 §9.1).
    """
    for name, v in (("input_key", input_key), ("model_key", model_key), ("kind", kind)):
        if not isinstance(v, str) or not v:
            raise InvalidInput(f"derive_uid: {name} must be a non-empty string, got {v!r}")
    return derived_uid(NAMESPACE, input_key, model_key, kind, *(str(e) for e in extra))
