"""Transfer syntaxes (PS3.5 §10, Annex A) and the presentation contexts we offer and propose.

The Storage SCP accepts every storage SOP class pynetdicom knows in every transfer syntax we can
store byte-for-byte (we never decode pixels on ingest).  On the sending side,
:func:`fit_to_contexts` transcodes a data set to a syntax the peer accepted when the peer
refused the stored one (PS3.5 §10: any SCU may decompress to Explicit/Implicit VR Little
Endian).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEG2000MC,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import _STORAGE_CLASSES

from hounsfield.errors import PeerError

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: every syntax the Storage SCP accepts, most preferred first
STORABLE: tuple[UID, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, JPEG2000MCLossless,
    JPEG2000MC, RLELossless, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,
)
#: storage SOP classes (PS3.4 Annex B.5), as pynetdicom knows them
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(sorted(set(_STORAGE_CLASSES.values())))


def storage_contexts() -> list[PresentationContext]:
    """SCP side: every storage SOP class with every storable transfer syntax."""
    return [build_context(uid, list(STORABLE)) for uid in STORAGE_SOP_CLASSES]


def propose_for(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """SCU side: contexts for (SOP class, stored transfer syntax) pairs.

    For each SOP class: one context offering the stored syntax(es) as they are, and one offering
    the uncompressed syntaxes as the fallback the peer can always accept.  At most 128 contexts
    (PS3.8 §9.3.2.2 presentation context IDs are odd numbers 1..255).
    """
    by_class: dict[str, list[str]] = {}
    for sop, ts in pairs:
        lst = by_class.setdefault(sop, [])
        if ts and ts not in lst:
            lst.append(ts)
    out: list[PresentationContext] = []
    for sop, syntaxes in by_class.items():
        compressed = [t for t in syntaxes if t not in UNCOMPRESSED]
        for ts in compressed:
            out.append(build_context(sop, [ts]))
        out.append(build_context(sop, list(UNCOMPRESSED)))
    if len(out) > 128:
        raise PeerError(f"{len(out)} presentation contexts needed (more than 128 SOP class / "
                        "transfer syntax pairs); send in smaller batches")
    return out


def accepted_syntaxes(contexts: Sequence[PresentationContext], sop_class: str) -> list[str]:
    """Transfer syntaxes the peer accepted for ``sop_class`` (in context order)."""
    out: list[str] = []
    for cx in contexts:
        if cx.abstract_syntax == sop_class and cx.result in (0, None):
            out.extend(str(t) for t in cx.transfer_syntax)
    return out


def fit_to_contexts(ds: Dataset, contexts: Sequence[PresentationContext]) -> tuple[Dataset, str]:
    """Return ``ds`` in a transfer syntax the peer accepted, and what was done.

    Unchanged when the stored syntax was accepted; decompressed to Explicit (or Implicit) VR
    Little Endian when only uncompressed was accepted; RLE-compressed when only RLE Lossless was.
    Raises :class:`PeerError` when no accepted syntax can be produced.
    """
    sop = str(ds.SOPClassUID)
    ts = str(ds.file_meta.TransferSyntaxUID)
    ok = accepted_syntaxes(contexts, sop)
    if not ok:
        raise PeerError(f"peer accepted no presentation context for SOP class {UID(sop).name or sop}")
    if ts in ok:
        return ds, ""
    target = next((t for t in ok if t in UNCOMPRESSED), None)
    if target is not None:
        if UID(ts).is_compressed:
            ds.decompress()  # -> Explicit VR Little Endian
        if target == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds, f"transcoded {UID(ts).name} -> {UID(target).name}"
    if RLELossless in ok and "PixelData" in ds:
        if UID(ts).is_compressed:
            ds.decompress()
        ds.compress(RLELossless)
        return ds, f"transcoded {UID(ts).name} -> RLE Lossless"
    raise PeerError(f"peer accepts {', '.join(UID(t).name for t in ok)} for {UID(sop).name}; "
                    f"cannot transcode from {UID(ts).name}")
