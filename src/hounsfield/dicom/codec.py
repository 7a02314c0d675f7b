"""Data sets to and from the bytes of a DIMSE message (PS3.5 7, A.1-A.5): what the lean DIMSE
path reads (a C-FIND identifier) and writes (its responses).

:func:`encode_dataset` writes the flat data sets query responses are made of (text, numbers,
empty values and empty sequences) straight to bytes in little endian transfer syntaxes —
several times faster than pydicom's general writer, which is what it falls back to (through
pynetdicom's ``dsutils``) for anything else (big endian, deflate, sequences with items, binary
values, text that needs a character set other than UTF-8 or ASCII).
"""

from __future__ import annotations

import io
import struct

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import dsutils

IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
DEFLATED_LE, EXPLICIT_BE = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"

_TEXT = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
_NUMBER = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l", "FL": "<f", "FD": "<d"}
_LONG_HEADER = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # PS3.5 7.1.2
_UTF8_SETS = ("ISO_IR 192", "ISO_IR 6", "", None)


def decode_dataset(raw: bytes, transfer_syntax: str) -> Dataset:
    """A data set received in ``transfer_syntax`` (uncompressed, or deflated, PS3.5 A.5)."""
    return dsutils.decode(io.BytesIO(raw), transfer_syntax == IMPLICIT_LE,
                          transfer_syntax != EXPLICIT_BE, transfer_syntax == DEFLATED_LE)


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded in ``transfer_syntax`` (the inverse of :func:`decode_dataset`): flat
    data sets in little endian written directly, the rest by pynetdicom's encoder (pydicom's
    writer; deflated and padded to an even length for Deflated Explicit VR Little Endian)."""
    implicit = transfer_syntax == IMPLICIT_LE
    if transfer_syntax in (IMPLICIT_LE, EXPLICIT_LE):
        out = _encode_flat(ds, implicit)
        if out is not None:
            return out
    out = dsutils.encode(ds, implicit, transfer_syntax != EXPLICIT_BE,
                         transfer_syntax == DEFLATED_LE)
    if out is None:
        raise ValueError(f"cannot encode the data set in {transfer_syntax}")
    return out


def _encode_flat(ds: Dataset, implicit: bool) -> bytes | None:
    """Little endian bytes of a flat data set, or ``None`` when it is not one."""
    charset = ds.get("SpecificCharacterSet")
    utf8 = isinstance(charset, str | None) and charset in _UTF8_SETS
    parts: list[bytes] = []
    for elem in ds:  # in tag order
        vr, value, tag = elem.VR, elem.value, elem.tag
        if vr == "SQ":
            if value:  # items: pydicom's writer
                return None
            body = b""
        elif value is None or value == "":
            body = b""
        elif vr in _TEXT:
            if isinstance(value, (list, tuple, MultiValue)):
                text = "\\".join(str(v) for v in value)
            else:
                text = str(value)
            if not (utf8 or text.isascii()):
                return None
            body = text.encode("utf-8")
            if len(body) % 2:
                body += b"\0" if vr == "UI" else b" "
        elif vr in _NUMBER:
            values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
            try:
                body = b"".join(struct.pack(_NUMBER[vr], v) for v in values)
            except (struct.error, TypeError):
                return None
        else:
            return None
        if implicit:
            parts.append(struct.pack("<HHL", tag.group, tag.element, len(body)))
        elif vr in _LONG_HEADER:
            parts.append(struct.pack("<HH2sHL", tag.group, tag.element, vr.encode(), 0,
                                     len(body)))
        elif len(body) > 0xFFFF:
            return None
        else:
            parts.append(struct.pack("<HH2sH", tag.group, tag.element, vr.encode(), len(body)))
        parts.append(body)
    return b"".join(parts)
