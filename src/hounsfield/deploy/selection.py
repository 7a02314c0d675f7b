"""Routing a study: which rule applies, which series the model reads, and why — from headers only.

Public API
----------
- :func:`route(archive, study_uid, rules) -> RouteDecision`: tries the enabled rules in
  :meth:`~hounsfield.deploy.rules.RuleSet.ordered` order and stops at the first that matches.
  Nothing runs and no pixel is decoded: the facts are the archive's index rows and each
  instance's DICOM JSON header (``Instance.metadata_json``).  Raises
  :class:`~hounsfield.errors.NotFound` when the study is not in the archive.
- :class:`RouteDecision` (``outcome`` says which of three it is):

  - ``"routed"``: ``rule``, ``model`` (``NAME@ALIAS``), ``profile``, ``destinations`` and the
    chosen ``series_uid`` are set — create the job;
  - ``"unmatched"``: ``rule is None``; ``reason`` and ``log`` say why each rule did not apply —
    record it, create no job;
  - ``"no-series"``: a rule matched (``rule``, ``model``, ... set) but every series it could
    read is broken (missing slice, mixed orientations, tilt, ...): ``series_uid is None`` and
    ``reason`` names each — the job fails with that reason and nothing is sent.

  ``log`` is the human decision log, one line per decision ("chose series 3: axial 1 mm B31f,
  300 slices", "skipped series 1: localizer", "rule chest-ct: modality MR is not CT");
  ``series`` holds a :class:`SeriesVerdict` per series under the matched rule.
- :func:`study_facts(archive, study_uid) -> StudyFacts`: the facts routing reads (for display).

When a rule applies
-------------------
A rule *matches* a study when its study-level attributes pass (modality, body part, study
description, calling AE, site, patient age) and at least one series passes the built-in
exclusions and the rule's series-level attributes; otherwise the next rule is tried.  The
series that pass are then checked with the imaging core's geometry (:func:`stacks_of`,
:func:`stack_geometry` on header-only data sets): one stack, one orientation, no missing
slice, regular spacing, no gantry tilt, equal Rows/Columns/PixelSpacing.  Of those that pass,
the rule's ``prefer`` list picks one (each preference breaks the ties of the one before it;
the last tie-breakers are the lowest series number, then the Series Instance UID).

Built-in exclusions (always, before the rule's own attributes): objects that are not images
(SR — including radiation dose reports —, presentation states, SEG, RT, KOS ...), secondary
captures (also dose screens), localizers (ImageType LOCALIZER, a localizer-like description,
or a few images in several orientations), derived images and reformats (ImageType DERIVED /
SECONDARY / REFORMATTED / MPR / MIP / PROJECTION), and series of fewer than
:data:`MIN_VOLUME_SLICES` images.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import select

from hounsfield.archive.models import Instance, Patient, Series, Study
from hounsfield.deploy.rules import (PREFERENCE_MEANING, Match, PatternPreference, Range, Rule,
                                     RuleSet)
from hounsfield.errors import HounsfieldError, NotFound
from hounsfield.imaging.frames import Frame
from hounsfield.imaging.series import Stack, stack_geometry, stacks_of

#: a series of fewer images is not a volume a model can read
MIN_VOLUME_SLICES = 3
#: |component| of the slice normal along an axis above which a plane is axial/coronal/sagittal
ORTHOGONAL_COS = 0.9
#: SOP classes of secondary captures (PS3.4 B.5)
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
                     "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
                     "1.2.840.10008.5.1.4.1.1.7.4"}
#: radiation dose structured reports (X-Ray, Radiopharmaceutical, Patient, Enhanced X-Ray)
DOSE_SR = {"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68",
           "1.2.840.10008.5.1.4.1.1.88.73", "1.2.840.10008.5.1.4.1.1.88.76"}
#: modalities whose objects are not images a model reads
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD",
                        "REG", "FID", "DOC", "AU", "ECG", "HD", "PLAN"}
DERIVED_VALUES = {"REFORMATTED", "MPR", "MIP", "MINIP", "PROJECTION IMAGE", "CURVED", "VOLUME"}
LOCALIZER_DESCRIPTIONS = ("*localizer*", "*localiser*", "*scout*", "*topogram*", "*surview*",
                          "*scanogram*", "*survey*", "*pilot*")

Outcome = Literal["routed", "unmatched", "no-series"]


# -- facts ------------------------------------------------------------------------------------
def _values(meta: dict, tag: str) -> list:
    el = meta.get(tag) or {}
    return list(el.get("Value") or [])


def _text(meta: dict, tag: str) -> str:
    v = _values(meta, tag)
    return "\\".join(str(x) for x in v).strip() if v else ""


@dataclass(frozen=True)
class SeriesFacts:
    """What routing knows of one series (index rows + the instances' DICOM JSON headers)."""

    series_uid: str
    number: int | None
    modality: str
    description: str
    protocol: str
    body_part: str
    kernel: str
    image_type: tuple[str, ...]  # the most common ImageType among the instances
    sop_classes: tuple[str, ...]
    instances: int
    contrast_agent: str  # ContrastBolusAgent ("" when absent)
    date_time: str  # SeriesDate + SeriesTime
    calling_aes: frozenset[str]
    sites: frozenset[str]
    headers: tuple[dict, ...] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"series {self.number}" if self.number is not None else f"series {self.series_uid}"

    @cached_property
    def geometry(self) -> _Geometry:
        return _Geometry.of(self)

    @property
    def thickness(self) -> float | None:
        """SliceThickness (median over the frames), else the spacing between slices."""
        g = self.geometry
        return g.thickness if g.thickness is not None else g.slice_spacing

    @property
    def summary(self) -> str:
        """"axial 1 mm B31f, 300 slices" (what the decision log says of a series)."""
        g = self.geometry
        parts = [g.orientation or self.modality]
        if self.thickness is not None:
            parts.append(f"{self.thickness:g} mm")
        if self.kernel:
            parts.append(self.kernel)
        n = g.frames or self.instances
        text = " ".join(parts) + f", {n} {'slice' if n == 1 else 'slices'}"
        return f"{text} ({self.description})" if self.description else text


@dataclass
class _Geometry:
    """A series' frames and stacks from its headers (no pixels), or why they cannot be built."""

    frames: int = 0
    stacks: list[Stack] = field(default_factory=list)  # non-localizer stacks, largest first
    localizer_frames: int = 0
    error: str | None = None
    thickness: float | None = None
    pixel_spacing: float | None = None
    slice_spacing: float | None = None

    @classmethod
    def of(cls, s: SeriesFacts) -> _Geometry:
        g = cls()
        try:
            stacks = stacks_of(_header_dataset(h) for h in s.headers)
        except HounsfieldError as exc:
            g.error = exc.reason
            return g
        g.stacks = [st for st in stacks if not st.frames[0].stack_key[1]]
        g.localizer_frames = sum(len(st.frames) for st in stacks if st.frames[0].stack_key[1])
        g.frames = sum(len(st.frames) for st in g.stacks)
        if g.stacks:
            main = g.stacks[0].frames
            thick = [f.thickness for f in main if f.thickness is not None and f.thickness > 0]
            g.thickness = float(np.median(thick)) if thick else None
            g.pixel_spacing = float(min(main[0].spacing_ij))
            if len(main) > 1:
                g.slice_spacing = float(np.median(np.diff(g.stacks[0].distances)))
        return g

    @property
    def orientations(self) -> Counter:
        """Frames per orientation label over all non-localizer stacks."""
        c: Counter = Counter()
        for st in self.stacks:
            c[orientation_of(st.frames[0])] += len(st.frames)
        return c

    @property
    def orientation(self) -> str:
        labels = list(self.orientations)
        return labels[0] if len(labels) == 1 else ("mixed" if labels else "")


def orientation_of(frame: Frame) -> str:
    """axial | coronal | sagittal | oblique, from the slice normal (patient LPS)."""
    n = np.abs(frame.normal)
    axis = int(np.argmax(n))
    if n[axis] < ORTHOGONAL_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


#: the attributes the imaging core's frame reader (imaging/frames.py) looks at, top level; a
#: header data set is built of these alone (pydicom's from_json of a whole header costs ~20 ms)
FRAME_KEYWORDS = (
    "SOPInstanceUID", "ImageType", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "RescaleSlope", "RescaleIntercept", "EchoNumbers", "TemporalPositionIdentifier",
    "TriggerTime", "AcquisitionNumber", "DiffusionBValue", "GridFrameOffsetVector",
    "DoseGridScaling", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
)
_FRAME_TAGS = tuple(f"{tag_for_keyword(k):08X}" for k in FRAME_KEYWORDS)
_PLAIN_VRS = frozenset({"CS", "DS", "IS", "UI", "US", "SS", "UL", "SL", "FL", "FD", "LO", "SH"})


def _header_dataset(meta: dict) -> Dataset:
    """A pydicom data set of an instance's geometry attributes (:data:`FRAME_KEYWORDS`) from its
    DICOM JSON, with an empty Pixel Data element so the imaging core takes it for an image;
    its pixels are never decoded here."""
    ds = Dataset()
    complex_part = {}
    for tag in _FRAME_TAGS:
        el = meta.get(tag)
        if el is None:
            continue
        vr, values = el.get("vr"), el.get("Value")
        if vr in _PLAIN_VRS and values is not None and all(
                isinstance(v, (str, int, float)) for v in values):
            ds.add_new(int(tag, 16), vr, values[0] if len(values) == 1 else values)
        else:
            complex_part[tag] = el
    if complex_part:
        ds.update(Dataset.from_json(complex_part, bulk_data_uri_handler=lambda *_: b""))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        ds.add_new(0x7FE00010, "OW", b"")
    return ds


@dataclass(frozen=True)
class StudyFacts:
    study_uid: str
    description: str
    study_date: str
    patient_age: float | None  # years
    series: tuple[SeriesFacts, ...]

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series if s.modality})

    @property
    def body_parts(self) -> list[str]:
        return sorted({s.body_part.upper() for s in self.series if s.body_part})

    @property
    def calling_aes(self) -> list[str]:
        return sorted(set().union(*(s.calling_aes for s in self.series)))

    @property
    def sites(self) -> list[str]:
        return sorted(set().union(*(s.sites for s in self.series)))


def calling_ae_of(source: str) -> str:
    """The calling AE title recorded in ``Instance.source`` (``AE@host`` for a C-STORE);
    "" for files (``import:...``), STOW-RS (``STOW@host``) and other sources."""
    if "@" not in source or source.startswith(("STOW@", "import:")):
        return ""
    return source.split("@", 1)[0].strip()


def patient_age_years(age: str, birth_date: str, study_date: str) -> float | None:
    """Age in years from PatientAge (``nnnD|W|M|Y``, PS3.5 AS), else birth date vs study date."""
    a = age.strip().upper()
    if len(a) == 4 and a[:3].isdigit() and a[3] in "DWMY":
        return int(a[:3]) / {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[a[3]]
    try:
        b = date(int(birth_date[:4]), int(birth_date[4:6]), int(birth_date[6:8]))
        s = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    except (ValueError, IndexError):
        return None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
    return float(years) if years >= 0 else None


def study_facts(archive: Any, study_uid: str) -> StudyFacts:
    """Gather what routing reads of a study; :class:`NotFound` when it is not in the archive."""
    with archive.session() as s:
        row = s.execute(select(Study.id, Study.study_description, Study.study_date,
                               Patient.patient_birth_date).join(Study.patient)
                        .where(Study.study_instance_uid == study_uid)).first()
        if row is None:
            raise NotFound(f"no study {study_uid} in the archive")
        series = s.execute(select(Series.id, Series.series_instance_uid, Series.series_number,
                                  Series.modality, Series.series_description,
                                  Series.body_part_examined, Series.series_date,
                                  Series.series_time)
                           .where(Series.study_pk == row.id)).all()
        insts = s.execute(select(Instance.series_pk, Instance.sop_class_uid, Instance.source,
                                 Instance.site, Instance.metadata_json)
                          .join(Instance.series).where(Series.study_pk == row.id)).all()
    by_series: dict[int, list] = {}
    for i in insts:
        by_series.setdefault(i.series_pk, []).append(i)
    out = []
    age_text = ""
    for se in series:
        rows = by_series.get(se.id, [])
        headers = tuple(r.metadata_json or {} for r in rows)
        first = headers[0] if headers else {}
        age_text = age_text or _text(first, "00101010")
        types = Counter(tuple(str(v).strip().upper() for v in _values(h, "00080008")) for h in headers)
        agents = [_text(h, "00180010") for h in headers]
        out.append(SeriesFacts(
            series_uid=se.series_instance_uid, number=se.series_number,
            modality=(se.modality or _text(first, "00080060")).upper(),
            description=se.series_description or "", protocol=_text(first, "00181030"),
            body_part=se.body_part_examined or _text(first, "00180015"),
            kernel=_text(first, "00181210"),
            image_type=types.most_common(1)[0][0] if types else (),
            sop_classes=tuple(sorted({r.sop_class_uid for r in rows})), instances=len(rows),
            contrast_agent=next((a for a in agents if a), ""),
            date_time=f"{se.series_date}{se.series_time}",
            calling_aes=frozenset(a for a in (calling_ae_of(r.source) for r in rows) if a),
            sites=frozenset(r.site for r in rows if r.site), headers=headers))
    out.sort(key=lambda f: (f.number is None, f.number or 0, f.series_uid))
    return StudyFacts(study_uid, row.study_description or "", row.study_date or "",
                      patient_age_years(age_text, row.patient_birth_date or "", row.study_date or ""),
                      tuple(out))


# -- decisions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesVerdict:
    """One series under the matched rule: chosen, qualified (but not preferred) or skipped."""

    series_uid: str
    label: str
    summary: str
    status: Literal["chosen", "qualified", "skipped", "broken"]
    reason: str | None = None  # why skipped / broken / not preferred


@dataclass(frozen=True)
class RouteDecision:
    """The routing decision for one study (see the module docstring)."""

    study_uid: str
    rule: str | None
    model: str | None
    profile: str | None
    destinations: tuple[str, ...]
    series_uid: str | None
    reason: str | None
    log: tuple[str, ...]
    series: tuple[SeriesVerdict, ...] = ()

    @property
    def outcome(self) -> Outcome:
        if self.rule is None:
            return "unmatched"
        return "routed" if self.series_uid is not None else "no-series"

    def text(self) -> str:
        """The decision log, one decision a line."""
        return "\n".join(self.log)


def _one_of(values: Iterable[str]) -> str:
    v = list(values)
    return v[0] if len(v) == 1 else ", ".join(v[:-1]) + " or " + v[-1]


def _study_reason(m: Match, st: StudyFacts) -> str | None:
    """Why the rule's study-level attributes reject the study, or ``None``."""
    if m.modality and not set(st.modalities) & set(m.modality):
        have = ", ".join(st.modalities) or "(none)"
        verb = "is" if len(st.modalities) <= 1 else "are"
        return f"modality {have} {verb} not {_one_of(m.modality)}"
    if m.body_part and not set(st.body_parts) & set(m.body_part):
        have = ", ".join(st.body_parts)
        return (f"body part {have} is not {_one_of(m.body_part)}" if have else
                f"no BodyPartExamined (the rule wants {_one_of(m.body_part)})")
    if m.study_description is not None:
        why = m.study_description.reason("study description", st.description)
        if why:
            return why
    if m.calling_ae and not set(st.calling_aes) & set(m.calling_ae):
        if not st.calling_aes:
            return f"not sent by a DICOM peer (imported or STOW-RS; the rule takes {_one_of(m.calling_ae)})"
        return f"sent by {', '.join(st.calling_aes)}, not {_one_of(m.calling_ae)}"
    if m.site and not set(st.sites) & set(m.site):
        return f"site {', '.join(st.sites) or '(none)'} is not {_one_of(m.site)}"
    age = st.patient_age
    return _range_reason(m.patient_age, age, f"patient age {age:.0f}" if age is not None else "",
                         " years", "patient age unknown (no PatientAge, no birth date)")


def _range_reason(rng: Range | None, value: float | None, shown: str, unit: str,
                  unknown: str) -> str | None:
    """``None`` when there is no range or ``value`` is in it; else ``unknown`` / "X, outside R"."""
    if rng is None:
        return None
    if value is None:
        return unknown
    return None if rng.contains(value) else f"{shown}, outside {rng}{unit}"


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


def builtin_exclusion(s: SeriesFacts) -> str | None:
    """Why ``s`` is never a model's input (dose report, SC, localizer, reformat, ...), or ``None``."""
    sops = set(s.sop_classes)
    desc = s.description.lower()
    if sops & DOSE_SR:
        return "dose report (" + _sop_name(sorted(sops & DOSE_SR)[0]) + ")"
    if sops & SECONDARY_CAPTURE:
        return "dose report (secondary capture)" if "dose" in desc else "secondary capture"
    if s.modality in NON_IMAGE_MODALITIES or any(u.startswith("1.2.840.10008.5.1.4.1.1.88.")
                                                  for u in sops):
        return f"not an image ({s.modality or _sop_name(sorted(sops)[0])})"
    it = s.image_type
    if "LOCALIZER" in it or any(fnmatch.fnmatchcase(desc, p) for p in LOCALIZER_DESCRIPTIONS):
        return "localizer"
    if (it[:1] == ("DERIVED",) or it[1:2] == ("SECONDARY",) or set(it) & DERIVED_VALUES):
        kind = "reformat" if set(it) & {"REFORMATTED", "MPR", "CURVED"} else "derived image"
        thick = s.geometry.thickness if s.geometry.error is None else None
        return (f"{thick:g} mm " if thick else "") + f"{kind} (ImageType {chr(92).join(it)})"
    g = s.geometry
    if g.error is None and 0 < g.frames <= MIN_VOLUME_SLICES and len(g.orientations) > 1:
        return f"localizer ({g.frames} images in {len(g.orientations)} orientations)"
    if g.error is None and g.frames < MIN_VOLUME_SLICES:
        n = g.frames
        return f"{n} {'image' if n == 1 else 'images'}: not a volume"
    return None


def _series_reason(m: Match, s: SeriesFacts) -> str | None:
    """Why the rule's series-level attributes reject ``s``, or ``None``."""
    if m.modality and s.modality not in m.modality:
        return f"modality {s.modality or '(none)'} is not {_one_of(m.modality)}"
    if m.sop_class and not set(s.sop_classes) & set(m.sop_class):
        return (f"SOP class {', '.join(_sop_name(u) for u in s.sop_classes)} is not "
                f"{_one_of(_sop_name(u) for u in m.sop_class)}")
    if m.image_type is not None and (why := m.image_type.reason(s.image_type)):
        return why
    for what, text, attr in (("series description", s.description, m.series_description),
                             ("protocol", s.protocol, m.protocol_name),
                             ("kernel", s.kernel, m.kernel)):
        if attr is not None and (why := attr.reason(what, text)):
            return why
    if m.contrast is True and not s.contrast_agent:
        return "no contrast (no ContrastBolusAgent; the rule takes contrast-enhanced series)"
    if m.contrast is False and s.contrast_agent:
        return f"contrast-enhanced ({s.contrast_agent}; the rule takes non-contrast series)"
    g = s.geometry
    if g.error is not None:
        return None  # attributes pass; the geometry check names the problem
    thick, spacing = s.thickness, g.pixel_spacing
    why = (_range_reason(m.slices, g.frames, f"{g.frames} slices", "", "")
           or _range_reason(m.slice_thickness_mm, thick, f"{thick:g} mm slices" if thick else "",
                            " mm", "slice thickness unknown (no SliceThickness, one slice)")
           or _range_reason(m.pixel_spacing_mm, spacing,
                            f"pixel spacing {spacing:g} mm" if spacing else "", " mm",
                            "pixel spacing unknown"))
    if why:
        return why
    if m.orientation and g.orientation not in ("mixed", "") and g.orientation not in m.orientation:
        return f"{g.orientation} (the rule takes {_one_of(m.orientation)})"
    return None


def geometry_problem(s: SeriesFacts) -> str | None:
    """Why the imaging core cannot build one regular volume of ``s``, or ``None``."""
    g = s.geometry
    if g.error is not None:
        return f"cannot place the images: {g.error}"
    if not g.stacks:
        return "no image stack (localizer images only)"
    if len(g.orientations) > 1:
        return "mixed orientations: " + ", ".join(f"{n} {o}" for o, n in g.orientations.most_common())
    if len(g.stacks) > 1:
        return (f"{len(g.stacks)} stacks in one series (phases, echoes or repeated scans?): "
                + "; ".join(st.description for st in g.stacks))
    stack = g.stacks[0]
    try:
        geo = stack_geometry(stack)
    except HounsfieldError as exc:
        return exc.reason
    if geo.tilted:
        return f"gantry tilt {geo.tilt_deg:.1f} degrees (the slices are sheared)"
    if geo.irregular_gap is not None:
        k = geo.irregular_gap
        d = stack.distances
        gap, step = float(d[k + 1] - d[k]), geo.slice_spacing
        if orientation_of(stack.frames[0]) == "axial":
            a, b = (float(stack.frames[i].position[2]) for i in (k, k + 1))
            where = f"between z={min(a, b):g} and z={max(a, b):g}"
        else:
            where = f"between {d[k]:g} and {d[k + 1]:g} mm along the slice normal"
        if gap > 1.5 * step:
            missing = max(int(round(gap / step)) - 1, 1)
            what = "missing slice" if missing == 1 else f"{missing} missing slices"
            return f"{what} {where} (gap {gap:g} mm, spacing {step:g} mm)"
        return f"irregular slice spacing {where} (gap {gap:g} mm, spacing {step:g} mm)"
    return None


def _preference_key(pref: str | PatternPreference, s: SeriesFacts) -> float:
    g = s.geometry
    if isinstance(pref, PatternPreference):
        value = {"kernel": s.kernel, "series_description": s.description,
                 "protocol_name": s.protocol}[pref.attribute]
        return float(pref.rank(value))
    if pref == "thinnest":
        return s.thickness if s.thickness is not None else math.inf
    if pref == "most_slices":
        return -float(g.frames)
    if pref == "finest_pixels":
        return g.pixel_spacing if g.pixel_spacing is not None else math.inf
    if pref == "lowest_number":
        return float(s.number) if s.number is not None else math.inf
    if pref == "newest":
        digits = "".join(ch for ch in s.date_time if ch.isdigit())
        return -float(digits) if digits else math.inf
    raise ValueError(f"unknown preference {pref!r}")  # the rules schema allows no other


def _pref_name(pref: str | PatternPreference) -> str:
    return str(pref) if isinstance(pref, PatternPreference) else PREFERENCE_MEANING[pref]


def _choose(rule: Rule, qualified: list[SeriesFacts]) -> tuple[SeriesFacts, dict[str, str]]:
    """The preferred series and, for each other one, the preference it lost on."""
    def key(s: SeriesFacts) -> tuple:
        return (*(_preference_key(p, s) for p in rule.prefer),
                s.number if s.number is not None else math.inf, s.series_uid)

    ranked = sorted(qualified, key=key)
    best = ranked[0]
    lost: dict[str, str] = {}
    for s in ranked[1:]:
        for p in rule.prefer:
            if _preference_key(p, s) != _preference_key(p, best):
                lost[s.series_uid] = f"not preferred ({_pref_name(p)} first)"
                break
        else:
            lost[s.series_uid] = "not preferred (a tie: lowest series number, then UID)"
    return best, lost


def _evaluate(rule: Rule, st: StudyFacts) -> tuple[str | None, list[SeriesVerdict], SeriesFacts | None]:
    """(why the rule does not apply | None, verdicts, chosen series | None)."""
    why = _study_reason(rule.match, st)
    if why:
        return why, [], None
    verdicts: dict[str, SeriesVerdict] = {}
    candidates: list[SeriesFacts] = []
    for s in st.series:
        reason = builtin_exclusion(s) or _series_reason(rule.match, s)
        if reason:
            verdicts[s.series_uid] = SeriesVerdict(s.series_uid, s.label, s.summary, "skipped", reason)
        else:
            candidates.append(s)
    if not candidates:
        listed = "; ".join(f"{v.label}: {v.reason}" for v in verdicts.values()) or "the study has no series"
        return f"no series qualifies: {listed}", list(verdicts.values()), None
    qualified = []
    for s in candidates:
        problem = geometry_problem(s)
        if problem:
            verdicts[s.series_uid] = SeriesVerdict(s.series_uid, s.label, s.summary, "broken", problem)
        else:
            qualified.append(s)
    chosen = None
    if qualified:
        chosen, lost = _choose(rule, qualified)
        for s in qualified:
            verdicts[s.series_uid] = (SeriesVerdict(s.series_uid, s.label, s.summary, "chosen")
                                      if s is chosen else
                                      SeriesVerdict(s.series_uid, s.label, s.summary, "qualified",
                                                    lost[s.series_uid]))
    order = {s.series_uid: k for k, s in enumerate(st.series)}
    return None, sorted(verdicts.values(), key=lambda v: order[v.series_uid]), chosen


def _study_line(st: StudyFacts) -> str:
    counts = Counter(s.modality or "?" for s in st.series)
    parts = [f"study {st.study_uid}: {len(st.series)} series ("
             + ", ".join(f"{m} {n}" for m, n in sorted(counts.items())) + ")"]
    if st.patient_age is not None:
        parts.append(f"patient age {st.patient_age:.0f}")
    if st.calling_aes:
        parts.append(f"sent by {', '.join(st.calling_aes)}")
    if st.sites:
        parts.append(f"site {', '.join(st.sites)}")
    return "; ".join(parts)


def route(archive: Any, study_uid: str, rules: RuleSet) -> RouteDecision:
    """Decide which rule, model alias, output profile, destinations and series a study gets.

    Reads the archive only (index rows and DICOM JSON headers); see the module docstring for
    the three outcomes and how series are chosen.  :class:`NotFound` if the study is unknown.
    """
    st = study_facts(archive, study_uid)
    log = [_study_line(st)]
    misses: list[str] = []
    for rule in rules.ordered():
        if not rule.enabled:
            log.append(f"rule {rule.name}: disabled")
            continue
        why, verdicts, chosen = _evaluate(rule, st)
        if why:
            log.append(f"rule {rule.name}: {why}")
            misses.append(f"{rule.name}: {why}")
            continue
        log.append(f"rule {rule.name} matched: model {rule.model}, profile {rule.profile}, "
                   f"destinations {', '.join(rule.destinations) or '(none)'}")
        for v in verdicts:
            if v.status == "chosen":
                log.append(f"chose {v.label}: {v.summary}")
        for v in verdicts:
            if v.status == "qualified":
                log.append(f"passed over {v.label}: {v.summary}; {v.reason}")
            elif v.status != "chosen":
                log.append(f"{'skipped' if v.status == 'skipped' else 'rejected'} {v.label}: {v.reason}")
        reason = None
        if chosen is None:
            broken = "; ".join(f"{v.label}: {v.reason}" for v in verdicts if v.status == "broken")
            reason = f"no series qualified for rule {rule.name}: {broken}"
            log.append(reason)
        return RouteDecision(st.study_uid, rule.name, rule.model, rule.profile,
                             tuple(rule.destinations), chosen.series_uid if chosen else None,
                             reason, tuple(log), tuple(verdicts))
    if not rules.rules:
        reason = "no rule matched: there are no routing rules"
    elif not misses:
        reason = "no rule matched: every rule is disabled"
    else:
        reason = "no rule matched (" + "; ".join(misses) + ")"
    log.append(reason)
    return RouteDecision(st.study_uid, None, None, None, (), None, reason, tuple(log))
