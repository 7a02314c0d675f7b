"""The verifier: lists every attribute left in a data set that the profile says must go.

It re-derives, independently of the engine's bookkeeping, what PS3.15 Table E.1-1 (and the
class rules for unlisted attributes) allow under the given options, walks the whole data set
(sequences included) and reports each violation with its path.  Given the original data set it
also searches every text value for the original's identifiers (names, IDs, birth date,
accession number), and checks that dates actually moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary

from pydicom.datadict import keyword_for_tag

from hounsfield.deid.engine import DUMMIES, PSEUDONYM_RE, _dictionary_vr, _identifiers, temporal_ok
from hounsfield.deid.profile import DEFAULT_SAFE_PRIVATE, DeidOptions, SafePrivate, class_action, resolve, rule_for

#: free-text VRs searched for the original's identifiers (CS holds defined terms, not text)
TEXTUAL = {"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "DA", "DT", "UR"}
#: attributes the engine itself adds (their fixed wording may contain common words)
OWN = {0x00120063, 0x00120064}
ALLOWED_DUMMIES = {str(v) for v in DUMMIES.values()} | {""}


@dataclass(frozen=True)
class Leak:
    path: str  # e.g. "(0008,1140)[0].(0008,1155)"
    keyword: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} {self.keyword}: {self.reason}"


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return []
    return [str(value)]


def _uid_ok(v: str) -> bool:
    return not v or v.startswith("2.25.") or v in UID_dictionary


@dataclass(frozen=True)
class Reference:
    """What the verifier needs from an original data set (taken before de-identifying it)."""

    identifiers: tuple[str, ...]
    dates: dict

    @classmethod
    def of(cls, ds: Dataset) -> Reference:
        return cls(tuple(_identifiers(ds)), _dates(ds))


def verify(ds: Dataset, options: DeidOptions | None = None, *,
           original: Dataset | Reference | None = None,
           safe_private: list[SafePrivate] | None = None) -> list[Leak]:
    """Every violation of the profile in ``ds`` (an empty list = clean)."""
    ref = Reference.of(original) if isinstance(original, Dataset) else original
    opts = options or DeidOptions()
    safe = {(s.creator.strip().upper(), s.group, s.element)
            for s in (safe_private if safe_private is not None else DEFAULT_SAFE_PRIVATE)}
    leaks: list[Leak] = []
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        leaks.append(Leak("(0012,0062)", "PatientIdentityRemoved", "not YES"))
    ids = [i for i in (ref.identifiers if ref is not None else ())
           if not any(i.upper() in d for d in ALLOWED_DUMMIES if d)]
    rx = (re.compile("(?<![A-Za-z0-9])(" + "|".join(re.escape(i) for i in ids) + ")(?![A-Za-z0-9])",
                     re.IGNORECASE) if ids else None)
    orig_dates = ref.dates if ref is not None else {}
    _walk(ds, "", opts, safe, rx, orig_dates, leaks)
    return leaks


def _dates(ds: Dataset) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}

    def walk(d: Dataset) -> None:
        for e in d:
            if e.VR == "SQ":
                for it in e.value:
                    walk(it)
            elif e.VR in ("DA", "DT"):
                for v in _values(e.value):
                    if len(v.strip()) >= 8:
                        out.setdefault(int(e.tag), set()).add(v.strip()[:8])

    walk(ds)
    return out


def _walk(ds: Dataset, prefix: str, opts: DeidOptions, safe: set, rx: re.Pattern | None,
          orig_dates: dict[int, set[str]], leaks: list[Leak]) -> None:
    for tag in list(ds.keys()):
        if tag.group == 0x0002 or int(tag) in OWN:
            continue
        path = f"{prefix}({tag.group:04X},{tag.element:04X})"
        if tag.is_private:
            if 0x0010 <= tag.element <= 0x00FF:
                if not opts.retain_safe_private:
                    leaks.append(Leak(path, "PrivateCreator", "private creator left"))
                continue
            creator = ds.get((tag.group << 16) | (tag.element >> 8))
            key = (str(creator.value).strip().upper() if creator else "", tag.group, tag.element & 0xFF)
            if not (opts.retain_safe_private and key in safe):
                leaks.append(Leak(path, "private", "private attribute not on the safe list"))
            continue
        raw = ds.get_item(tag)
        vr = raw.VR if raw.VR and raw.VR != "UN" else _dictionary_vr(tag)
        rule = rule_for(tag)
        action = resolve(rule, opts) if rule else class_action(tag, vr, opts)
        kw = keyword_for_tag(tag) or "unknown"
        if action == "X":
            leaks.append(Leak(path, kw, "must be removed"))
            continue
        if action == "K" and vr not in TEXTUAL and vr not in ("UI", "SQ"):
            continue  # kept, holds no text: no need to decode it
        elem = ds[tag]
        vals = _values(elem.value) if elem.VR != "SQ" else []
        if elem.VR == "SQ":
            if action == "Z" and len(elem.value):
                leaks.append(Leak(path, kw, "sequence must be empty"))
            for i, item in enumerate(elem.value):
                _walk(item, f"{path}[{i}].", opts, safe, rx, orig_dates, leaks)
            continue
        if action in ("Z", "D"):
            for v in vals:
                if elem.VR == "UI":
                    if not _uid_ok(v):
                        leaks.append(Leak(path, kw, f"UID not replaced: {v}"))
                elif not (v.strip() in ALLOWED_DUMMIES or PSEUDONYM_RE.match(v.strip())
                          or (elem.VR in ("DS", "IS", "FL", "FD", "SL", "SS", "UL", "US")
                              and v.strip() in ("0", "0.0"))):
                    leaks.append(Leak(path, kw, f"must be empty or a dummy, holds {v[:40]!r}"))
        elif action == "U" or (elem.VR == "UI" and action != "K"):
            for v in vals:
                if not _uid_ok(v):
                    leaks.append(Leak(path, kw, f"UID not replaced: {v}"))
        elif action == "C" and (elem.VR == "TM" or elem.keyword == "TimezoneOffsetFromUTC"):
            if not temporal_ok(elem.value, elem.VR):
                leaks.append(Leak(path, kw, "not a time / UTC offset"))
        elif action == "C" and elem.VR in ("DA", "DT"):
            before = orig_dates.get(int(tag), set())
            for v in vals:
                if v.strip()[:8] and v.strip()[:8] in before:
                    leaks.append(Leak(path, kw, f"date not shifted: {v}"))
        if rx is not None and elem.VR in TEXTUAL and not (
                elem.keyword in ("PatientName", "PatientID") and all(PSEUDONYM_RE.match(v) for v in vals)):
            for v in vals:
                m = rx.search(v)
                if m:
                    leaks.append(Leak(path, kw, f"holds an identifier of the original ({m.group(0)!r})"))
