"""Pre-flight check of an export destination: does it accept what its profile sends?

Before the first send to a DIMSE destination (and on demand: ``hounsfield destinations preflight
NAME``, the console's destinations page), Hounsfield opens one association proposing every SOP
class the destination's profile may send (:data:`~hounsfield.pacs.profiles.
RESULT_SOP_CLASSES`), one presentation context per (SOP class, transfer syntax) — the
profile's transfer syntaxes, or Explicit and Implicit VR Little Endian when it names none —
plus the Storage Commitment Push Model SOP Class when the profile waits for commitment
(PS3.8 §9.3.2.2: the SCP answers each context with acceptance or a reason).  It releases the
association without sending anything and records, per SOP class, the syntaxes accepted or the
reason for the refusal (table ``destination_preflight``).  Whatever the profile asks for and the
destination refuses becomes a warning (console, job log); the delivery still sends what is
accepted and records the refused objects as permanent failures with the reason.

STOW-RS (PS3.18 §10.5) has no standard way to ask a service which SOP classes or transfer
syntaxes it stores (an OPTIONS or capabilities request is not required of an origin server),
so a STOW-RS destination's pre-flight is recorded as ``not checkable``: what it refuses shows
per instance in the delivery log (Failure Reason 0x0122, 0xA900, ...).

A result is in force until the destination's address or effective profile changes (its
``fingerprint``) or someone asks again; an unreachable or rejecting destination is asked again
before the next send.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pydicom.uid import UID
from pynetdicom.presentation import build_context
from sqlalchemy import select

from hounsfield.archive.archive import Archive
from hounsfield.config import DimseDestination, Settings
from hounsfield.errors import PeerError
from hounsfield.pacs.profiles import (
    DEFAULT_SYNTAXES,
    RESULT_SOP_CLASSES,
    STORAGE_COMMITMENT_PUSH,
    Effective,
    effective,
)
from hounsfield.pacs.destinations import label, node_of
from hounsfield.pacs.preflight_models import DestinationPreflight

#: outcomes after which the next send asks again
RETRY_OUTCOMES = ("unreachable", "rejected")
#: PS3.8 Table 9-18 presentation context results
CONTEXT_RESULTS = {0: "acceptance", 1: "user rejection", 2: "no reason (provider rejection)",
                   3: "abstract syntax not supported (provider rejection)",
                   4: "transfer syntaxes not supported (provider rejection)"}
STOW_NOT_CHECKABLE = (
    "not checkable: STOW-RS (PS3.18 10.5) has no standard query for the SOP classes or "
    "transfer syntaxes a service stores (an OPTIONS or capabilities request is not required of "
    "an origin server); what it refuses is recorded per instance in the delivery log")


@dataclass
class Result:
    """One pre-flight result (see :class:`~hounsfield.pacs.preflight_models.
    DestinationPreflight` for the fields)."""

    destination: str
    kind: str
    address: str
    profile: str
    fingerprint: str
    outcome: str
    accepted: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: str = ""
    at: datetime | None = None
    actor: str = "system"

    @property
    def refused_classes(self) -> dict[str, str]:
        """SOP class UID -> why the destination refused it."""
        return {r["sop_class_uid"]: r.get("reason", "") for r in self.refused}

    def as_dict(self) -> dict:
        return {"destination": self.destination, "kind": self.kind, "address": self.address,
                "profile": self.profile, "outcome": self.outcome, "accepted": self.accepted,
                "refused": self.refused, "warnings": self.warnings, "detail": self.detail,
                "at": self.at.isoformat() if self.at else None, "actor": self.actor}


def _destination(settings: Settings, name: str):  # noqa: ANN202
    effective(settings, name)  # InvalidInput naming the known destinations
    return settings.export.destinations[name]


def _name(uid: str) -> str:
    return UID(uid).name or uid


def address(settings: Settings, name: str) -> str:
    """``AE@host:port`` of a DIMSE destination, the URL of a STOW-RS one."""
    dest = _destination(settings, name)
    return label(node_of(settings, dest)) if isinstance(dest, DimseDestination) else dest.url


def syntaxes_of(eff: Effective) -> tuple[str, ...]:
    """The transfer syntaxes the pre-flight proposes (and the send offers) for ``eff``."""
    return eff.transfer_syntaxes or DEFAULT_SYNTAXES


def fingerprint(settings: Settings, name: str) -> str:
    """A hash of what a pre-flight checked: the address and the effective profile."""
    eff = effective(settings, name)
    text = json.dumps([eff.kind, address(settings, name), sorted(eff.kinds),
                       list(syntaxes_of(eff)), eff.storage_commitment])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def proposal(eff: Effective) -> list[tuple[str, str]]:
    """(abstract syntax, transfer syntax) of every context the pre-flight proposes."""
    pairs = [(RESULT_SOP_CLASSES[k], ts) for k in sorted(eff.kinds)
             for ts in syntaxes_of(eff)]
    if eff.storage_commitment:
        pairs += [(STORAGE_COMMITMENT_PUSH, ts) for ts in DEFAULT_SYNTAXES]
    return pairs


def summarize(eff: Effective, answers: Iterable[tuple[str, str, int | None]], *,
              peer: str) -> tuple[list[dict], list[dict], list[str]]:
    """The pre-flight's findings from the SCP's answer to each proposed context.

    ``answers``: (abstract syntax, transfer syntax, result) per proposed context, ``result``
    as in PS3.8 Table 9-18 (0 acceptance, 1 user rejection, 2 no reason, 3 abstract syntax not
    supported, 4 transfer syntaxes not supported; None: no answer).  Returns ``(accepted,
    refused, warnings)``: per SOP class the syntaxes accepted, or the reason it was refused; a
    warning for each kind the profile sends that is refused, and for Storage Commitment asked
    for and refused.
    """
    by_class: dict[str, dict[str, list]] = {}
    for sop, ts, result in answers:
        entry = by_class.setdefault(str(sop), {"ok": [], "why": []})
        if result == 0:
            entry["ok"].append(str(ts))
        else:
            entry["why"].append(CONTEXT_RESULTS.get(result, "no answer") if result is not None
                                else "no answer")
    kind_of = {v: k for k, v in RESULT_SOP_CLASSES.items()}
    kind_of[STORAGE_COMMITMENT_PUSH] = "commitment"
    accepted, refused, warnings = [], [], []
    for sop, entry in by_class.items():
        kind = kind_of.get(sop, "")
        row = {"kind": kind, "sop_class_uid": sop, "name": _name(sop)}
        if entry["ok"]:
            accepted.append({**row, "transfer_syntaxes": entry["ok"]})
            continue
        reason = "; ".join(dict.fromkeys(entry["why"])) or "no answer"
        refused.append({**row, "reason": reason})
        if kind == "commitment":
            warnings.append(f"the profile {eff.profile!r} waits for Storage Commitment, but "
                            f"{peer} refuses the Storage Commitment Push Model SOP Class "
                            f"({reason}): deliveries there cannot be committed")
        else:
            syn = ", ".join(_name(t) for t in syntaxes_of(eff))
            warnings.append(f"the profile {eff.profile!r} sends {kind} ({_name(sop)}), which "
                            f"{peer} refuses ({reason}; offered in {syn}): those objects will "
                            "be recorded as not delivered")
    return accepted, refused, warnings


def check(settings: Settings, name: str, *, actor: str = "system") -> Result:
    """Run the pre-flight of destination ``name`` now (nothing is recorded: see :func:`run`).

    Never raises for the peer's behaviour: no association is outcome ``unreachable``, an
    A-ASSOCIATE-RJ ``rejected``, both with the reason in ``detail``.  Raises
    :class:`~hounsfield.errors.InvalidInput` for an unknown destination.
    """
    from hounsfield.pacs import scu

    eff = effective(settings, name)  # InvalidInput for an unknown destination
    dest = _destination(settings, name)
    where = address(settings, name)
    base = dict(destination=name, kind=dest.kind, address=where, profile=eff.profile,
                fingerprint=fingerprint(settings, name), actor=actor)
    if not isinstance(dest, DimseDestination):
        warnings = []
        asked = settings.export.all_profiles()[dest.profile].storage_commitment
        if dest.storage_commitment or (dest.storage_commitment is None and asked):
            warnings.append("Storage Commitment is a DIMSE service: it is off for this STOW-RS "
                            "destination (a 200/202 response counts as delivered)")
        syn = eff.transfer_syntaxes[0] if eff.transfer_syntaxes else ""
        detail = STOW_NOT_CHECKABLE + (f"; objects are sent in {_name(syn)} (transfer-syntax "
                                       "parameter of each part)" if syn else
                                       "; objects are sent as stored")
        return Result(outcome="not checkable", warnings=warnings, detail=detail, **base)
    pairs = proposal(eff)
    contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    try:
        assoc = scu.associate(settings, node_of(settings, dest), contexts, retries=0)
    except PeerError as exc:
        why = exc.detail if isinstance(exc.detail, dict) else {}
        if "no_contexts" in why:  # pynetdicom aborts when nothing was accepted
            accepted, refused, warnings = summarize(
                eff, [(sop, ts, 3) for sop, ts in pairs], peer=where)
            for r in refused:
                r["reason"] = "no presentation context accepted"
            warnings = [w.replace("abstract syntax not supported (provider rejection)",
                                  "no presentation context accepted") for w in warnings]
            return Result(outcome="warnings", accepted=accepted, refused=refused,
                          warnings=warnings, detail=exc.reason, **base)
        outcome = "rejected" if "rejected" in why else "unreachable"
        return Result(outcome=outcome, detail=exc.reason,
                      warnings=[f"pre-flight of {where} failed: {exc.reason}"], **base)
    try:
        answers = []
        got = {cx.context_id: cx for cx in [*assoc.accepted_contexts, *assoc.rejected_contexts]}
        for cx_id, (sop, ts) in zip(range(1, 2 * len(pairs), 2), pairs, strict=True):
            cx = got.get(cx_id)
            answers.append((sop, ts, cx.result if cx is not None else None))
    finally:
        if assoc.is_established:
            assoc.release()
    accepted, refused, warnings = summarize(eff, answers, peer=where)
    n = len(accepted)
    detail = (f"{n} of {n + len(refused)} SOP classes accepted by {where}"
              + (f"; refused: {', '.join(r['name'] for r in refused)}" if refused else ""))
    return Result(outcome="warnings" if warnings else "ok", accepted=accepted, refused=refused,
                  warnings=warnings, detail=detail, **base)


def record(archive: Archive, result: Result) -> Result:
    """Append ``result`` to the ``destination_preflight`` table."""
    with archive.write_session() as s, s.begin():
        row = DestinationPreflight(
            destination=result.destination[:64], kind=result.kind,
            address=result.address[:512], profile=result.profile[:64],
            fingerprint=result.fingerprint, outcome=result.outcome, accepted=result.accepted,
            refused=result.refused, warnings=result.warnings, detail=result.detail,
            actor=result.actor[:128])
        s.add(row)
        s.flush()
        result.at = row.at
    return result


def run(archive: Archive, name: str, *, actor: str = "system") -> Result:
    """Check destination ``name`` now and record the result."""
    return record(archive, check(archive.settings, name, actor=actor))


def latest(archive: Archive, name: str) -> Result | None:
    """The newest recorded pre-flight of ``name`` (None: never checked)."""
    with archive.session() as s:
        row = s.scalars(select(DestinationPreflight)
                        .where(DestinationPreflight.destination == name[:64])
                        .order_by(DestinationPreflight.at.desc(),
                                  DestinationPreflight.id.desc()).limit(1)).first()
    if row is None:
        return None
    return Result(destination=row.destination, kind=row.kind, address=row.address,
                  profile=row.profile, fingerprint=row.fingerprint, outcome=row.outcome,
                  accepted=list(row.accepted), refused=list(row.refused),
                  warnings=list(row.warnings), detail=row.detail, at=_aware(row.at),
                  actor=row.actor)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)  # SQLite keeps no zone


def ensure(archive: Archive, name: str) -> Result:
    """The pre-flight in force for ``name``: the recorded one when it still describes the
    destination (same fingerprint, not unreachable / rejected), else a new one, recorded."""
    last = latest(archive, name)
    if (last is not None and last.fingerprint == fingerprint(archive.settings, name)
            and last.outcome not in RETRY_OUTCOMES):
        return last
    return run(archive, name)


def overview(archive: Archive) -> list[dict]:
    """Every export destination with its profile, effective settings and last pre-flight (the
    console's destinations page, ``/api/destinations``, ``hounsfield destinations list``)."""
    settings = archive.settings
    out = []
    for name in sorted(settings.export.destinations):
        dest = settings.export.destinations[name]
        eff = effective(settings, name)
        last = latest(archive, name)
        current = last is not None and last.fingerprint == fingerprint(settings, name)
        out.append({
            "name": name, "kind": dest.kind, "address": address(settings, name),
            "profile": eff.profile,
            "description": settings.export.all_profiles()[eff.profile].description,
            "kinds": sorted(eff.kinds),
            "sop_classes": {k: RESULT_SOP_CLASSES[k] for k in sorted(eff.kinds)},
            "transfer_syntaxes": [{"uid": t, "name": _name(t)} for t in eff.transfer_syntaxes],
            "storage_commitment": eff.storage_commitment, "supersede": eff.supersede,
            "max_associations": dest.max_associations,
            "preflight": last.as_dict() if last else None,
            "preflight_current": current,
            "warnings": list(last.warnings) if last else [],
        })
    return out
