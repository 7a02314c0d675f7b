"""DICOM JSON model (PS3.18 Annex F) for the index's per-instance metadata cache.

Bulk data (binary VRs over a threshold) is left out and replaced by a *relative*
``BulkDataURI`` of the form ``bulkdata/<tag>[/<item>/<tag>...]``.  The DICOMweb layer makes it
absolute (``<base>/studies/<st>/series/<se>/instances/<sop>/bulkdata/...``) when it serves it.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD = 1024


# Value representations whose JSON can be read straight from the encoded bytes, exactly as
# pydicom would convert them (pydicom.values: convert_string / convert_AE_string / convert_UI /
# convert_numbers; default encoding, not the Specific Character Set) — without building a
# DataElement per attribute, which is most of the cost of a header's JSON.
_TEXT_VRS = frozenset({"CS", "AS", "DA", "TM", "DT"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}


def raw_json(raw: RawDataElement) -> dict[str, Any] | None:
    """The JSON of a still-encoded element of a simple VR; ``None``: use pydicom's way."""
    vr = raw.VR
    if vr is None:
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    value = raw.value
    if value is None or raw.length == 0xFFFFFFFF or getattr(raw, "is_buffered", False):
        return None
    if vr in _TEXT_VRS or vr == "UI" or vr == "AE":
        try:
            text = value.decode("iso8859")
        except (UnicodeDecodeError, AttributeError):
            return None
        if vr == "AE":
            items = [v.strip() for v in text.split("\\")]
            if len(items) == 1 and not items[0]:
                return {"vr": vr}
        else:
            stripped = text.rstrip(" \x00")
            if not stripped:
                return {"vr": vr}
            items = stripped.split("\\")
        return {"vr": vr, "Value": items}
    if vr in ("IS", "DS"):  # decimal strings: numbers in JSON (pydicom: int() / float())
        if not isinstance(value, bytes) or not value.isascii():
            return None
        stripped = value.decode("ascii").strip(" \x00")
        if not stripped:
            return {"vr": vr}
        try:
            cast = int if vr == "IS" else float
            numbers = [cast(v.strip(" \x00")) for v in stripped.split("\\")]
        except ValueError:  # an empty or odd component: pydicom's way decides
            return None
        if vr == "DS" and not all(math.isfinite(n) for n in numbers):
            return None
        return {"vr": vr, "Value": numbers}
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is None:
        return None
    size = struct.calcsize("<" + fmt)
    if len(value) % size:
        return None
    if not value:
        return {"vr": vr}
    count = len(value) // size
    numbers = struct.unpack(("<" if raw.is_little_endian else ">") + fmt * count, value)
    cast = float if fmt in "fd" else int
    return {"vr": vr, "Value": [cast(n) for n in numbers]}


# The JSON of other short encoded elements (text in the data set's character set, PN, DS,
# IS, ...), by their bytes: the instances of one series repeat most of their header (patient,
# study, series, equipment, geometry), and pydicom's conversion is the costly part.  The dicts
# are shared between the instances' metadata, which is only ever serialised, never changed.
_CACHE: dict[tuple, dict[str, Any]] = {}
CACHE_MAX = 8192
_CACHE_VALUE_MAX = 256


def remember(cache: dict, key: Any, value: Any) -> Any:
    """Put ``value`` under ``key`` in a bounded cache (emptied when it reaches
    :data:`CACHE_MAX` entries) and return it."""
    if len(cache) >= CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def character_set(ds: Dataset) -> Any:
    """The character set ``ds``'s text values are decoded with (hashable)."""
    cs = ds._character_set  # noqa: SLF001 - pydicom's own answer, parents' included
    return tuple(cs) if isinstance(cs, list) else cs


def value_key(key: int, raw: RawDataElement, charset: Any) -> tuple | None:
    """What an encoded element's decoded value depends on (to cache it by), or ``None`` when
    that is more than its own bytes and the character set."""
    value = raw.value
    if (value is None or len(value) > _CACHE_VALUE_MAX or raw.length == 0xFFFFFFFF
            or raw.VR in ("SQ", "UN") or getattr(raw, "is_buffered", False)):
        return None
    if raw.VR is None:  # implicit VR: the dictionary's, unless it depends on other elements
        try:
            if " or " in dictionary_VR(key):
                return None
        except KeyError:
            return None
    return key, raw.VR, value, raw.is_little_endian, charset


def _walk(ds: Dataset, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw_elements = ds._dict  # noqa: SLF001 - read-only look at elements not yet decoded
    charset: Any = None
    for key in sorted(raw_elements):
        if key.group == 0x0002 or key.element == 0x0000:
            continue  # file meta and group lengths are not part of the JSON model
        tag = f"{key:08X}"
        raw = raw_elements[key]
        ck = None
        if isinstance(raw, RawDataElement):
            fast = raw_json(raw)
            if fast is not None:
                out[tag] = fast
                continue
            if charset is None:
                charset = character_set(ds)
            ck = value_key(key, raw, charset)
            if ck is not None:
                hit = _CACHE.get(ck)
                if hit is not None:
                    out[tag] = hit
                    continue
        elem = ds[key]
        path = f"{prefix}{tag}"
        if elem.VR == "SQ":
            items = [_walk(item, f"{path}/{i}/") for i, item in enumerate(elem.value or [])]
            out[tag] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if elem.VR in BULK_VRS and _length(elem) > BULK_THRESHOLD:
            out[tag] = {"vr": elem.VR, "BulkDataURI": f"bulkdata/{path}"}
            continue
        try:
            out[tag] = elem.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 30)
        except Exception:  # noqa: BLE001 - an odd value must not stop ingest; drop the value
            out[tag] = {"vr": elem.VR if elem.VR in _JSON_VRS else "UN"}
            continue
        if ck is not None:
            remember(_CACHE, ck, out[tag])
    return out


_JSON_VRS = frozenset(
    "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
    "US UT UV".split()
)


def _length(elem: DataElement) -> int:
    v = elem.value
    if v is None:
        return 0
    if isinstance(v, (bytes, bytearray)):
        return len(v)
    try:
        return len(v)
    except TypeError:
        return 0


def dataset_to_json(ds: Dataset) -> dict[str, Any]:
    """The instance's DICOM JSON (PS3.18 F.2) without bulk data, ready to cache in the index."""
    return _walk(ds, "")


def resolve_bulkdata_path(ds: Dataset, path: str) -> DataElement:
    """Find the element a relative bulk data path (``tag[/item/tag]...``) names.

    Raises ``KeyError`` / ``IndexError`` / ``ValueError`` for paths that do not resolve, so a
    caller can answer 404 rather than trusting the path.
    """
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise ValueError(f"bad bulk data path {path!r}")
    current: Dataset = ds
    for i in range(0, len(parts) - 1, 2):
        seq = current[int(parts[i], 16)]
        current = seq.value[int(parts[i + 1])]
    return current[int(parts[-1], 16)]
