"""The de-identification engine: PS3.15 Annex E applied to one data set, recursively.

Every element is decided: public attributes by Table E.1-1 (:mod:`hounsfield.deid.profile`) or,
when the table does not list them, by the rule of their class; private attributes are removed
unless the Retain Safe Private option keeps an allow-listed one.  Nothing passes silently.

Consistency across studies and runs comes from keyed hashes (HMAC-SHA256 with the configured
key): the same UID always maps to the same ``2.25`` UID (references inside sequences included,
so SEG / SR / presentation-state references stay valid), the same patient to the same pseudonym
and the same per-patient date shift.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, PYDICOM_IMPLEMENTATION_UID, UID_dictionary

from hounsfield import __version__
from hounsfield.deid.pixels import PixelRegionRule, blank_regions, burned_in_reason, matching_rule
from hounsfield.deid.profile import (
    DEFAULT_SAFE_PRIVATE,
    EDITION,
    DeidOptions,
    SafePrivate,
    class_action,
    resolve,
    rule_for,
)
from hounsfield.dicom.uids import derived_uid

DUMMY_TEXT = "ANONYMIZED"
DUMMIES = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "PN": "ANONYMIZED",
    "LO": DUMMY_TEXT, "SH": DUMMY_TEXT, "ST": DUMMY_TEXT, "LT": DUMMY_TEXT, "UT": DUMMY_TEXT,
    "UC": DUMMY_TEXT, "UR": "", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0,
    "SV": 0, "UV": 0,
}
PSEUDONYM_PREFIX = "HF-"
PSEUDONYM_RE = re.compile(r"^HF-[0-9A-F]{16}$")
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames",
                     "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
                     "AccessionNumber", "PatientBirthDate", "PatientTelephoneNumbers",
                     "ReferringPhysicianName", "MedicalRecordLocator")


@dataclass
class DeidResult:
    dataset: Dataset
    patient_pseudonym: str
    original_patient: dict[str, str]
    uid_map: dict[str, str]  # original -> new, for the study / series / instance UIDs
    flagged: str = ""  # why the pixels may carry burned-in text ("" = not flagged)
    pixels_cleaned: bool = False

    @property
    def exportable(self) -> bool:
        """Flagged images that were not cleaned are never exported."""
        return not self.flagged or self.pixels_cleaned


@dataclass
class Deidentifier:
    """Applies the profile with ``options``; ``key`` keys every hash (keep it secret)."""

    key: bytes
    options: DeidOptions = field(default_factory=DeidOptions)
    safe_private: list[SafePrivate] = field(default_factory=lambda: list(DEFAULT_SAFE_PRIVATE))
    pixel_rules: list[PixelRegionRule] = field(default_factory=list)
    max_date_shift_days: int = 3650

    def __post_init__(self) -> None:
        self._safe = {(s.creator.strip().upper(), s.group, s.element) for s in self.safe_private}
        self._uid_cache: dict[str, str] = {}
        names = ["HOUNSFIELD PS3.15 BASIC PROFILE"] + [
            k.upper().replace("_", " ")[:64] for k, v in self.options.model_dump().items() if v]
        self._method = (names, self.options.codes())

    # -- keyed mappings ----------------------------------------------------------------------
    def _mac(self, *parts: str) -> bytes:
        return hmac.new(self.key, "\x1f".join(parts).encode(), hashlib.sha256).digest()

    def pseudonym(self, patient_id: str, issuer: str = "") -> str:
        return PSEUDONYM_PREFIX + self._mac("patient", issuer, patient_id).hex()[:16].upper()

    def date_shift(self, patient_id: str, issuer: str = "") -> int:
        """Days to move this patient's dates back by (1 .. max_date_shift_days)."""
        n = int.from_bytes(self._mac("date-shift", issuer, patient_id)[:4], "big")
        return 1 + n % self.max_date_shift_days

    def map_uid(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\0")
        if not uid or uid in UID_dictionary:
            return uid
        new = self._uid_cache.get(uid)
        if new is None:
            new = derived_uid("deid", uid, key=self.key)
            self._uid_cache[uid] = new
        return new

    # -- the data set ------------------------------------------------------------------------
    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` in place (pass a copy to keep the original) and describe it."""
        pid = str(ds.get("PatientID", "") or "")
        issuer = str(ds.get("IssuerOfPatientID", "") or "")
        pseudo = self.pseudonym(pid, issuer)
        original = {"PatientID": pid, "IssuerOfPatientID": issuer,
                    "PatientName": str(ds.get("PatientName", "") or ""),
                    "PatientBirthDate": str(ds.get("PatientBirthDate", "") or "")}
        uid_map = {t: str(ds[t].value) for t in (0x0020000D, 0x0020000E, 0x00080018) if t in ds}
        flagged = burned_in_reason(ds)
        cleaned = False
        if flagged:
            rule = matching_rule(ds, self.pixel_rules)
            if rule is not None:
                blank_regions(ds, rule)
                cleaned = True
        ctx = _Context(self, pseudo, -self.date_shift(pid, issuer), _scrubber(ds))
        self._walk(ds, ctx)
        self._mark(ds, pseudo, cleaned)
        uid_map = {v: self.map_uid(v) for v in uid_map.values() if v}
        return DeidResult(ds, pseudo, original, uid_map, flagged, cleaned)

    def _walk(self, ds: Dataset, ctx: _Context) -> None:
        creators_used: set[int] = set()
        private_creators: list[int] = []
        for tag in list(ds.keys()):
            if tag.group == 0x0002:
                continue
            if tag.is_private:
                if 0x0010 <= tag.element <= 0x00FF:
                    private_creators.append(tag)
                    continue
                if self._safe_private(ds, tag):
                    creators_used.add((tag.group << 16) | (tag.element >> 8))
                    continue
                del ds[tag]
                continue
            raw = ds.get_item(tag)
            vr = raw.VR if raw.VR and raw.VR != "UN" else _dictionary_vr(tag)
            rule = rule_for(tag)
            action = resolve(rule, self.options) if rule else class_action(tag, vr, self.options)
            if action == "K" and vr != "SQ" and raw.VR:
                continue  # kept as read (explicit VR): no need to decode the value
            if action == "X":
                del ds[tag]
                continue
            self._apply(ds, ds[tag], action, ctx)
        for ctag in private_creators:
            if ((ctag.group << 16) | ctag.element) not in creators_used:
                del ds[ctag]

    def _safe_private(self, ds: Dataset, tag) -> bool:  # noqa: ANN001
        if not self.options.retain_safe_private:
            return False
        creator_tag = (tag.group << 16) | (tag.element >> 8)
        creator = ds.get(creator_tag)
        if creator is None:
            return False
        return (str(creator.value).strip().upper(), tag.group, tag.element & 0xFF) in self._safe

    def _apply(self, ds: Dataset, elem: DataElement, action: str, ctx: _Context) -> None:
        vr = elem.VR
        if action == "X":
            del ds[elem.tag]
        elif vr == "SQ":
            if action == "Z":
                elem.value = Sequence([])
            else:  # D / K / U / C on a sequence: keep its structure, de-identify every item
                for item in elem.value:
                    self._walk(item, ctx)
        elif action == "Z":
            if elem.keyword in ("PatientName", "PatientID"):
                elem.value = ctx.pseudonym
            else:
                elem.value = b"" if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") else ""
        elif action == "D":
            if vr == "UI":
                elem.value = self._uids(elem.value)
            elif vr in DUMMIES:
                elem.value = DUMMIES[vr]
            else:
                elem.value = b"" if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") else ""
        elif action == "U":
            if vr == "UI":
                elem.value = self._uids(elem.value)
            else:
                del ds[elem.tag]
        elif action == "C":
            if vr in ("DA", "DT"):
                shifted = _shift(elem.value, vr, ctx.shift_days)
                if shifted is None:
                    del ds[elem.tag]
                else:
                    elem.value = shifted
            elif vr == "TM" or elem.keyword == "TimezoneOffsetFromUTC":
                if not temporal_ok(elem.value, vr):  # times stay, if they are only times
                    del ds[elem.tag]
            elif vr not in ("LO", "LT", "SH", "ST", "UT", "UC"):
                pass  # coded / numeric values hold no free text
            else:
                elem.value = ctx.scrub(elem.value)
        elif action == "S":
            elem.value = ctx.scrub(elem.value)
        # "K": keep as is

    def _uids(self, value: object) -> object:
        if isinstance(value, (list, MultiValue)):
            return [self.map_uid(v) for v in value]
        return self.map_uid(str(value)) if value else value

    def _mark(self, ds: Dataset, pseudo: str, cleaned: bool) -> None:
        """Attributes that say what was done (PS3.15 E.1.1, PS3.3 C.7.1.1); set by tag (fast)."""
        names, codes = self._method
        if cleaned:
            names = [*names, "CLEAN PIXEL DATA"]
            codes = [*codes, ("113101", "Clean Pixel Data Option")]
        items = []
        for value, meaning in codes:
            it = Dataset()
            it.add_new(0x00080100, "SH", value)
            it.add_new(0x00080102, "SH", "DCM")
            it.add_new(0x00080104, "LO", meaning)
            items.append(it)
        ds.add_new(0x00120062, "CS", "YES")  # PatientIdentityRemoved
        ds.add_new(0x00120063, "LO", names)  # DeidentificationMethod
        ds.add_new(0x00120064, "SQ", Sequence(items))  # ...CodeSequence
        ds.add_new(0x00280303, "CS", "MODIFIED" if self.options.retain_longitudinal_modified_dates
                   else "REMOVED")  # LongitudinalTemporalInformationModified
        if cleaned:
            ds.add_new(0x00280301, "CS", "NO")  # BurnedInAnnotation
        for tag, vr in ((0x00100010, "PN"), (0x00100020, "LO")):
            if tag in ds:
                ds.add_new(tag, vr, pseudo)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and 0x00080018 in ds:
            meta.MediaStorageSOPInstanceUID = ds[0x00080018].value
            meta.ImplementationClassUID = UID(PYDICOM_IMPLEMENTATION_UID)
            meta.ImplementationVersionName = f"HOUNSFIELD_{__version__}"[:16]
            for tag in (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102):
                if tag in meta:  # AE titles and private information of the sender
                    del meta[tag]


@dataclass
class _Context:
    engine: Deidentifier
    pseudonym: str
    shift_days: int
    scrub: object  # callable(value) -> value

    def __post_init__(self) -> None:
        pass


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


_TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_TZ_RE = re.compile(r"^[+-]\d{4}$")


def temporal_ok(value: object, vr: str) -> bool:
    """A TM value (or a UTC offset) that is only that: kept under modified dates."""
    rx = _TM_RE if vr == "TM" else _TZ_RE
    values = list(value) if isinstance(value, (list, MultiValue)) else [value]
    return all(not str(v).strip() or rx.match(str(v).strip()) for v in values)


def _identifiers(ds: Dataset) -> list[str]:
    out: set[str] = set()
    for kw in IDENTITY_KEYWORDS:
        v = ds.get(kw)
        if v is None or v == "":
            continue
        values = v if isinstance(v, (list, MultiValue)) else [v]
        for val in values:
            s = str(val).strip()
            if len(s) >= 3:
                out.add(s)
            for part in re.split(r"[\^= ,]+", s):  # name components
                if len(part) >= 3:
                    out.add(part)
    return sorted(out, key=len, reverse=True)


def _scrubber(ds: Dataset):  # noqa: ANN202
    ids = _identifiers(ds)
    if not ids:
        return lambda v: v
    rx = re.compile("|".join(re.escape(i) for i in ids), re.IGNORECASE)

    def scrub(value: object) -> object:
        if isinstance(value, (list, MultiValue)):
            return [scrub(v) for v in value]
        if value is None or not isinstance(value, str):
            s = str(value) if value is not None else ""
        else:
            s = value
        return rx.sub("", s)

    return scrub


def _shift_da(v: str, days: int) -> str | None:
    v = v.strip()
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        d = date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return None
    try:
        return (d + timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def _shift(value: object, vr: str, days: int) -> object | None:
    """Move DA/DT values by ``days`` (PS3.15 E.3.6 modified dates); None = cannot, remove."""
    values = list(value) if isinstance(value, (list, MultiValue)) else [value]
    out = []
    for v in values:
        s = str(v).strip()
        if not s:
            out.append(s)
            continue
        if vr == "DA":
            new = _shift_da(s, days)
        else:
            head = _shift_da(s[:8], days) if len(s) >= 8 else None
            new = head + s[8:] if head else None
        if new is None:
            return None
        out.append(new)
    return out if len(out) > 1 else out[0]


def to_part10(ds: Dataset, tail: bytes = b"") -> bytes:
    """Serialise a de-identified data set as a PS3.10 file (file meta built when missing).

    ``tail`` is the still-encoded Pixel Data element (bytes of the original file, same transfer
    syntax) appended as is by :func:`deidentify_bytes`.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import correct_ambiguous_vr, write_dataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset() if meta is None else meta
        implicit = getattr(ds, "is_implicit_VR", None) or getattr(ds, "_is_implicit_VR", None)
        little = getattr(ds, "is_little_endian", True)
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)
        ds.file_meta = meta
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = UID(PYDICOM_IMPLEMENTATION_UID)
    meta.ImplementationVersionName = f"HOUNSFIELD_{__version__}"[:16]
    ts = meta.TransferSyntaxUID
    enc = getattr(ds, "original_encoding", (None, None))
    declared = (ts.is_implicit_VR, ts.is_little_endian)
    if enc[0] is not None and not ts.is_encapsulated and (enc[0], enc[1]) != declared:
        # the file said one native syntax and was encoded in another (read leniently): say
        # what the (raw, kept) elements really are
        ts = (ImplicitVRLittleEndian if enc[0] else
              ExplicitVRLittleEndian if enc[1] else ExplicitVRBigEndian)
        meta.TransferSyntaxUID = ts
    if ts.is_deflated:
        import io

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    head = b"\0" * 128 + b"DICM" + _meta_group(meta)
    for attempt in (0, 1):
        buf = DicomBytesIO()
        buf.write(head)
        buf.is_little_endian = ts.is_little_endian
        buf.is_implicit_VR = ts.is_implicit_VR
        try:
            write_dataset(buf, ds)
            break
        except ValueError as exc:  # elements read without a VR: settle 'OB or OW' etc.
            if attempt or "ambiguous VR" not in str(exc):
                raise
            correct_ambiguous_vr(ds, ts.is_little_endian)
    if tail:
        buf.write(tail)
    return buf.getvalue()


def _meta_group(meta) -> bytes:  # noqa: ANN001 - FileMetaDataset
    """The File Meta Information group (PS3.10 §7.1), Explicit VR Little Endian, by hand.

    Written directly (pydicom's writer deep-copies and validates the group on every call);
    only the attributes a de-identified file keeps: version, SOP class / instance, transfer
    syntax, implementation class UID and version name.
    """
    def el(elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        if vr == b"OB":
            return (b"\x02\x00" + elem.to_bytes(2, "little") + vr + b"\0\0"
                    + len(value).to_bytes(4, "little") + value)
        return b"\x02\x00" + elem.to_bytes(2, "little") + vr + len(value).to_bytes(2, "little") + value

    def text(kw: str) -> bytes:
        return str(meta.get(kw, "") or "").encode("ascii", "replace")

    body = (el(0x0001, b"OB", b"\x00\x01") + el(0x0002, b"UI", text("MediaStorageSOPClassUID"))
            + el(0x0003, b"UI", text("MediaStorageSOPInstanceUID"))
            + el(0x0010, b"UI", text("TransferSyntaxUID"))
            + el(0x0012, b"UI", text("ImplementationClassUID"))
            + el(0x0013, b"SH", text("ImplementationVersionName")))
    return el(0x0000, b"UL", len(body).to_bytes(4, "little")) + body


_FAST_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _pixel_tail(data: bytes, pos: int, ts: UID) -> bytes | None:
    """The Pixel Data element at ``pos`` if it runs exactly to the end of the file, else None."""
    if pos >= len(data):
        return b""
    if data[pos:pos + 4] != b"\xe0\x7f\x10\x00":
        return None
    if ts.is_implicit_VR:
        length, head = int.from_bytes(data[pos + 4:pos + 8], "little"), 8
    else:
        length, head = int.from_bytes(data[pos + 8:pos + 12], "little"), 12
    if length == 0xFFFFFFFF:
        return data[pos:] if data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") else None
    return data[pos:] if pos + head + length == len(data) else None


def deidentify_bytes(engine: Deidentifier, data: bytes) -> tuple[bytes, DeidResult]:
    """De-identify one PS3.10 file given as bytes; returns the new file and what was done.

    Fast path: only the header is parsed and rewritten, the encoded Pixel Data element is copied
    unchanged (it holds no attributes).  Files whose pixels must be cleaned, deflated or
    big-endian files and files with elements after Pixel Data take the full path.
    """
    import io

    import pydicom

    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    ts = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) else None
    tail = None
    enc = getattr(ds, "original_encoding", (None, None))
    if ts is not None and (enc[0], enc[1]) == (ts.is_implicit_VR, ts.is_little_endian):
        native = str(ts) in _FAST_TS
        encapsulated = ts.is_encapsulated and ts.is_little_endian and not ts.is_deflated
        if native or encapsulated:
            tail = _pixel_tail(data, fp.tell(), ts)
    flagged = burned_in_reason(ds, has_pixels=bool(tail))
    if tail is None or (flagged and matching_rule(ds, engine.pixel_rules) is not None):
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        res = engine.deidentify(ds)
        return to_part10(ds), res
    res = engine.deidentify(ds)
    res.flagged = flagged
    return to_part10(ds, tail), res
