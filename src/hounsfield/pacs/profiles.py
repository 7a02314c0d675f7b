"""PACS-compatibility profiles, resolved per destination.

A profile (:class:`~hounsfield.config.OutputProfile`, built-in or ``[export.profiles.NAME]``)
says which result objects a destination gets, in which transfer syntaxes, whether a delivery
waits for the PACS's Storage Commitment, and how superseded results are withdrawn.  A
destination names one profile and may override ``storage_commitment``, ``transfer_syntaxes``
and ``supersede``; :func:`effective` is what the export actually does for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hounsfield.config import Settings
from hounsfield.errors import InvalidInput


@dataclass(frozen=True)
class Effective:
    """The profile in force for one destination."""

    destination: str
    profile: str
    kinds: frozenset[str]
    transfer_syntaxes: tuple[str, ...]
    storage_commitment: bool
    supersede: str  # "iocm" | "version"
    kind: str       # "dimse" | "stowrs"


def effective(settings: Settings, destination: str) -> Effective:
    """The profile, with the destination's overrides, that export to ``destination`` uses.

    Storage Commitment is a DIMSE service: asked for on a STOW-RS destination it is off (the
    pre-flight check says so).  Raises :class:`InvalidInput` for an unknown destination.
    """
    dests = settings.export.destinations
    if destination not in dests:
        known = ", ".join(sorted(dests)) or "none configured ([export.destinations.NAME])"
        raise InvalidInput(f"unknown export destination {destination!r} (known: {known})")
    dest = dests[destination]
    prof = settings.export.all_profiles()[dest.profile]
    commit = prof.storage_commitment if dest.storage_commitment is None else dest.storage_commitment
    syntaxes = prof.transfer_syntaxes if dest.transfer_syntaxes is None else dest.transfer_syntaxes
    return Effective(
        destination=destination, profile=dest.profile, kinds=prof.kinds,
        transfer_syntaxes=tuple(syntaxes),
        storage_commitment=bool(commit) and dest.kind == "dimse",
        supersede=dest.supersede or prof.supersede, kind=dest.kind)


def kinds_for(settings: Settings, profile: str) -> frozenset[str]:
    """The result kinds of profile ``profile`` (built-in or configured)."""
    profiles = settings.export.all_profiles()
    if profile not in profiles:
        raise InvalidInput(f"unknown output profile {profile!r}: known profiles are "
                           f"{', '.join(profiles)}")
    return profiles[profile].kinds


#: the SOP class Hounsfield writes for each result kind (docs/conformance.md lists them)
RESULT_SOP_CLASSES: dict[str, str] = {
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation Storage
    "SR": "1.2.840.10008.5.1.4.1.1.88.34",     # Comprehensive 3D SR Storage (TID 1500)
    "SC": "1.2.840.10008.5.1.4.1.1.7",         # Secondary Capture Image Storage
    "GSPS": "1.2.840.10008.5.1.4.1.1.11.1",    # Grayscale Softcopy Presentation State Storage
    "KOS": "1.2.840.10008.5.1.4.1.1.88.59",    # Key Object Selection Document Storage
    "PDF": "1.2.840.10008.5.1.4.1.1.104.1",    # Encapsulated PDF Storage
}
#: Storage Commitment Push Model SOP Class (PS3.4 Annex J)
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
#: what a destination whose profile names no transfer syntaxes is offered (as stored: our
#: result objects are written in Explicit VR Little Endian; Implicit is every SCP's default)
DEFAULT_SYNTAXES: tuple[str, ...] = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def job_kinds(settings: Settings, profile: str, destinations: list[str]) -> frozenset[str]:
    """The kinds a job builds: its rule's profile's kinds and every destination's effective
    kinds (a ``legacy`` destination gets its SC, GSPS, KOS and PDF even when the rule says
    ``ai-ready``).  A destination that is no longer configured adds nothing (its export
    reports it)."""
    kinds = set(kinds_for(settings, profile))
    for name in destinations:
        if name in settings.export.destinations:
            kinds |= effective(settings, name).kinds
    return frozenset(kinds)
