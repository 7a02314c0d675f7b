"""Transfer syntaxes (PS3.5 §10, Annex A) and the presentation contexts we offer and propose.

The Storage SCP accepts every storage SOP class pynetdicom knows in every transfer syntax we can
store byte-for-byte (we never decode pixels on ingest).  On the sending side,
:func:`fit_to_contexts` transcodes a data set to a syntax the peer accepted when the peer
refused the stored one (PS3.5 §10: any SCU may decompress to Explicit/Implicit VR Little
Endian); under a PACS-compatibility profile that lists transfer syntaxes the SCU proposes
exactly those (:func:`propose_syntaxes`) and :func:`convert` re-encodes into the accepted one
(lossless encoders only: :data:`ENCODABLE`).
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

from hounsfield.errors import HounsfieldError, PeerError

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


#: compressed syntaxes Hounsfield can encode into (lossless only: result objects are never
#: degraded by a lossy re-encoding; pydicom's RLE encoder, pyjpegls, pylibjpeg-openjpeg)
ENCODABLE: tuple[UID, ...] = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
#: uncompressed syntaxes Hounsfield writes (Explicit VR Big Endian is retired and not written)
WRITABLE_NATIVE: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian)


class Unconvertible(HounsfieldError):
    """A data set cannot be converted into the transfer syntax asked for (no encoder, a pixel
    format the encoder refuses, pixel data that cannot be decoded)."""

    http_status = 406


def _name(ts: str) -> str:
    return UID(ts).name or str(ts)


def can_produce(stored: str, target: str, *, has_pixels: bool = True) -> bool:
    """Whether :func:`convert` can, in principle, turn a data set stored in ``stored`` into
    ``target`` (the pixel format may still refuse: see :func:`convert`)."""
    if stored == target:
        return True
    if target in WRITABLE_NATIVE:
        return True
    return UID(target).is_compressed and (not has_pixels or target in ENCODABLE)


def convert(ds: Dataset, target: str) -> tuple[Dataset, str]:
    """``ds`` re-encoded in transfer syntax ``target`` (PS3.5 §10, Annex A), and what was done.

    The result is written and read back, so its encoding and its File Meta agree (as
    pynetdicom checks before a C-STORE).  Compressed pixel data is decoded first (pydicom's
    pixel handlers, pylibjpeg, GDCM); a compressed ``target`` is encoded with a lossless
    encoder (:data:`ENCODABLE`); a data set without pixel data is written as Explicit VR
    Little Endian under any compressed syntax (PS3.5 A.4).  Raises :class:`Unconvertible`
    saying why otherwise (unknown syntax, big endian, a lossy or unsupported encoder, a pixel
    format the encoder refuses, undecodable pixel data).
    """
    import io

    from pydicom import dcmread

    target = UID(str(target))
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    if stored == target:
        return ds, ""
    if not target.is_transfer_syntax:
        raise Unconvertible(f"{target} is not a transfer syntax UID")
    what = f"{_name(stored)} -> {_name(target)}"
    pixels = "PixelData" in ds
    if target == ExplicitVRBigEndian:
        raise Unconvertible(f"cannot convert {what}: Explicit VR Big Endian is retired and "
                            "not written")
    if target.is_compressed and pixels and target not in ENCODABLE:
        raise Unconvertible(
            f"cannot convert {what}: no lossless encoder for {_name(target)} (Hounsfield "
            f"encodes {', '.join(_name(t) for t in ENCODABLE)}; lossy re-encoding of results "
            "is never done)")
    try:
        if pixels and stored.is_compressed:
            # the same instance in another encoding: keep its SOP Instance UID (pydicom would
            # generate a new one by default)
            ds.decompress(generate_instance_uid=False)  # -> Explicit VR Little Endian
        if pixels and target.is_compressed:
            ds.compress(target, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = target
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out = dcmread(io.BytesIO(buf.getvalue()))
    except Unconvertible:
        raise
    except Exception as exc:  # noqa: BLE001 - the codec's own words are the reason
        raise Unconvertible(f"cannot convert {what}: {type(exc).__name__}: {exc}") from exc
    note = " (no pixel data: Explicit VR Little Endian encoding)" \
        if target.is_compressed and not pixels else ""
    return out, f"transcoded {what}{note}"


def propose_syntaxes(sop_classes: Iterable[str], syntaxes: Sequence[str]
                     ) -> list[PresentationContext]:
    """SCU side, under a profile that names its transfer syntaxes: one context per SOP class
    proposing exactly ``syntaxes`` (preferred first; the SCP picks one, PS3.8 §9.3.2.2)."""
    out = [build_context(sop, list(syntaxes)) for sop in dict.fromkeys(sop_classes)]
    if len(out) > 128:
        raise PeerError(f"{len(out)} presentation contexts needed (more than 128 SOP "
                        "classes); send in smaller batches")
    return out


def fit_to_contexts(ds: Dataset, contexts: Sequence[PresentationContext],
                    preferred: Sequence[str] = ()) -> tuple[Dataset, str]:
    """Return ``ds`` in a transfer syntax the peer accepted, and what was done.

    Unchanged when the stored syntax was accepted (and, with ``preferred`` — a profile's
    syntaxes — is one of them); otherwise converted (:func:`convert`) into the first accepted
    syntax in ``preferred`` order (without ``preferred``: uncompressed first, then RLE
    Lossless).  Raises :class:`PeerError` when the peer accepted no context for the SOP class
    and :class:`Unconvertible` when no accepted syntax can be produced.
    """
    sop = str(ds.SOPClassUID)
    ts = str(ds.file_meta.TransferSyntaxUID)
    ok = accepted_syntaxes(contexts, sop)
    if not ok:
        raise PeerError(f"peer accepted no presentation context for SOP class {_name(sop)}")
    if preferred:
        ok = [t for t in preferred if t in ok] or ok
    if ts in ok:
        return ds, ""
    order = ok if preferred else (
        [t for t in ok if t in UNCOMPRESSED] + [t for t in ok if t == RLELossless])
    why = []
    for target in order:
        try:
            return convert(ds, target)
        except Unconvertible as exc:
            why.append(exc.reason)
    raise Unconvertible(f"peer accepts {', '.join(_name(t) for t in ok)} for {_name(sop)}; "
                        + ("; ".join(why) if why else f"cannot convert from {_name(ts)}"))
