"""Routing rules: which model alias runs on which study, as a YAML file validated by pydantic.

Public API
----------
- :class:`RuleSet` (``rules: list[Rule]``; :meth:`RuleSet.ordered` = the order they are tried)
  and :class:`Rule` (``name, enabled, priority, description, match, prefer, model, profile,
  destinations``); :class:`Match`, :class:`TextMatch`, :class:`Range`, :class:`ImageTypeMatch`,
  :class:`PatternPreference` are its parts.
- :func:`parse_rules(text, source=...)` and :func:`load_rules(path)` -> :class:`RuleSet`;
  both raise :class:`hounsfield.errors.InvalidInput` whose ``reason`` lists every problem as
  ``FILE:LINE: rule 'NAME': FIELD: what is wrong`` (``detail`` holds the same lines as a list).
- :func:`rules_path(settings)`: where the rules live (``settings.deploy.rules_file``, default
  ``<data_dir>/rules.yaml``).

The file::

    rules:
      - name: chest-ct-nodules
        priority: 10                 # lower runs first; equal priorities keep file order
        match:
          modality: [CT]             # study level: the study has a CT series ...
          body_part: [CHEST, LUNG]   # ... and one whose BodyPartExamined is one of these
          slice_thickness_mm: {min: 0.5, max: 2.5}   # series level
          image_type: {all_of: [ORIGINAL, PRIMARY, AXIAL]}
          orientation: [axial]
        prefer: [thinnest, most_slices, {kernel: ["B3*", "*STANDARD*"]}]
        model: nodules@production    # an alias, never a plain name or a number
        profile: ai-ready            # ai-ready | legacy | all | an [export.profiles] name
        destinations: [pacs]

Study-level attributes (decide whether a rule applies to a study): ``modality`` (some series
has it), ``body_part`` (some series' BodyPartExamined), ``study_description``, ``calling_ae``
(the AE title that sent the instances by C-STORE; files and STOW-RS have none), ``site``,
``patient_age`` (years, from PatientAge or PatientBirthDate vs StudyDate).  Series-level
attributes (decide which series qualify; see :mod:`hounsfield.deploy.selection`): ``modality``
again, ``sop_class`` (UIDs or pydicom keywords such as ``CTImageStorage``), ``image_type``
(``all_of`` / ``none_of`` ImageType values), ``series_description``, ``protocol_name``,
``kernel`` (ConvolutionKernel), ``slice_thickness_mm``, ``pixel_spacing_mm``, ``slices``,
``contrast`` (true: ContrastBolusAgent present, false: absent), ``orientation``.

Text patterns (:class:`TextMatch`) are case-insensitive: ``glob`` is a list of shell-style
patterns (:mod:`fnmatch`: ``*``, ``?``, ``[...]``; the whole value must match, any one of the
list suffices), ``regex`` a Python regular expression searched anywhere in the value, and
``exclude`` globs the value must match none of.  A bare string or list means ``glob``.
Nothing in the file is evaluated: no ``eval``, no ``$`` expressions.
"""

from __future__ import annotations

import fnmatch
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from hounsfield.errors import InvalidInput

#: the built-in output profiles; a rule may also name an ``[export.profiles.NAME]`` of the
#: settings it is checked against (``parse_rules(..., profiles=...)``)
Profile = Literal["ai-ready", "legacy", "all"]
BUILTIN_PROFILE_NAMES: tuple[str, ...] = typing.get_args(Profile)
Orientation = Literal["axial", "coronal", "sagittal", "oblique"]
SimplePreference = Literal["thinnest", "most_slices", "finest_pixels", "lowest_number", "newest"]

#: what a simple preference means, for the docs and the decision log
PREFERENCE_MEANING = {
    "thinnest": "thinnest slices",
    "most_slices": "most slices",
    "finest_pixels": "smallest pixel spacing",
    "lowest_number": "lowest series number",
    "newest": "latest series date/time",
}
ALIAS_HINT = "routing rules name an alias such as nodules@production"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_REF = re.compile(rf"^({_NAME})@({_NAME})$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """An inclusive range ``{min: A, max: B}``; either end may be left out."""

    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ends(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        if self.min is None:
            return f"<= {self.max:g}"
        if self.max is None:
            return f">= {self.min:g}"
        return f"{self.min:g}-{self.max:g}"


class TextMatch(_Strict):
    """Case-insensitive text match: any of ``glob`` or ``regex`` (when given), none of ``exclude``."""

    glob: list[str] = Field(default_factory=list)
    regex: str | None = None
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"glob": [v]}
        if isinstance(v, list):
            return {"glob": v}
        return v

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"bad regular expression {v!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _something(self) -> TextMatch:
        if not (self.glob or self.regex or self.exclude):
            raise ValueError("give glob, regex or exclude")
        return self

    def reason(self, what: str, value: str) -> str | None:
        """``None`` when ``value`` matches, else why not (for the decision log)."""
        low = value.strip().lower()
        shown = repr(value.strip()) if value.strip() else "(empty)"
        for pat in self.exclude:
            if fnmatch.fnmatchcase(low, pat.lower()):
                return f"{what} {shown} matches the excluded {pat!r}"
        if not self.glob and self.regex is None:
            return None
        if any(fnmatch.fnmatchcase(low, p.lower()) for p in self.glob):
            return None
        if self.regex is not None and re.search(self.regex, value, re.IGNORECASE):
            return None
        wanted = [repr(p) for p in self.glob] + ([f"/{self.regex}/"] if self.regex else [])
        return f"{what} {shown} does not match {' or '.join(wanted)}"


class ImageTypeMatch(_Strict):
    """ImageType (0008,0008) values: the series has ``all_of`` and none of ``none_of``."""

    all_of: list[str] = Field(default_factory=list)
    none_of: list[str] = Field(default_factory=list)

    @field_validator("all_of", "none_of")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [s.strip().upper() for s in v]

    def reason(self, values: tuple[str, ...]) -> str | None:
        have = set(values)
        shown = "\\".join(values) or "(none)"
        missing = [v for v in self.all_of if v not in have]
        if missing:
            return f"ImageType {shown} lacks {', '.join(missing)}"
        banned = [v for v in self.none_of if v in have]
        if banned:
            return f"ImageType {shown} has {', '.join(banned)}"
        return None


def _sop_class_uid(value: str) -> str:
    """A SOP Class UID from a dotted UID or a pydicom keyword (``CTImageStorage``)."""
    from pydicom.uid import UID_dictionary

    v = value.strip()
    if _UID.match(v):
        return v
    for uid, entry in UID_dictionary.items():
        if entry[4] == v and entry[1] == "SOP Class":
            return uid
    raise ValueError(f"unknown SOP class {value!r} (give a UID or a keyword such as CTImageStorage)")


class Match(_Strict):
    """What a rule matches; study-level and series-level attributes (see the module docstring)."""

    # study level
    modality: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)
    study_description: TextMatch | None = None
    calling_ae: list[str] = Field(default_factory=list)
    site: list[str] = Field(default_factory=list)
    patient_age: Range | None = None
    # series level
    sop_class: list[str] = Field(default_factory=list)
    image_type: ImageTypeMatch | None = None
    series_description: TextMatch | None = None
    protocol_name: TextMatch | None = None
    kernel: TextMatch | None = None
    slice_thickness_mm: Range | None = None
    pixel_spacing_mm: Range | None = None
    slices: Range | None = None
    contrast: bool | None = None
    orientation: list[Orientation] = Field(default_factory=list)

    @field_validator("modality", "body_part")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [s.strip().upper() for s in v]

    @field_validator("calling_ae", "site")
    @classmethod
    def _stripped(cls, v: list[str]) -> list[str]:
        return [s.strip() for s in v]

    @field_validator("sop_class")
    @classmethod
    def _uids(cls, v: list[str]) -> list[str]:
        return [_sop_class_uid(s) for s in v]


class PatternPreference(_Strict):
    """Prefer series whose attribute matches an earlier glob of the list (case-insensitive)."""

    kernel: list[str] | None = None
    series_description: list[str] | None = None
    protocol_name: list[str] | None = None

    @model_validator(mode="after")
    def _one(self) -> PatternPreference:
        given = [k for k in ("kernel", "series_description", "protocol_name") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a pattern preference names exactly one of kernel, "
                             "series_description, protocol_name with a list of globs")
        return self

    @property
    def attribute(self) -> str:
        return next(k for k in ("kernel", "series_description", "protocol_name") if getattr(self, k))

    @property
    def patterns(self) -> list[str]:
        return list(getattr(self, self.attribute))

    def rank(self, value: str) -> int:
        """Index of the first matching glob; ``len(patterns)`` when none matches."""
        low = value.strip().lower()
        for k, p in enumerate(self.patterns):
            if fnmatch.fnmatchcase(low, p.lower()):
                return k
        return len(self.patterns)

    def __str__(self) -> str:
        return f"{self.attribute} in the order {', '.join(self.patterns)}"


Preference = Annotated[Union[SimplePreference, PatternPreference], Field(union_mode="left_to_right")]


class Rule(_Strict):
    """One routing rule.  ``model`` is ``NAME@ALIAS`` (e.g. ``nodules@production``)."""

    name: str = Field(pattern=rf"^{_NAME}$", max_length=64)
    enabled: bool = True
    priority: int = 100
    description: str = ""
    match: Match = Field(default_factory=Match)
    prefer: list[Preference] = Field(default_factory=lambda: ["thinnest", "most_slices"])
    model: str
    profile: str = Field(default="ai-ready", pattern=rf"^{_NAME}$", max_length=64)
    destinations: list[str] = Field(default_factory=list)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("profiles") or BUILTIN_PROFILE_NAMES
        if v not in known:
            raise ValueError(f"unknown output profile {v!r}: known profiles are "
                             f"{', '.join(known)} (more are defined in [export.profiles.NAME])")
        return v

    @field_validator("prefer", mode="before")
    @classmethod
    def _known_preferences(cls, v: Any) -> Any:
        for item in v if isinstance(v, list) else []:
            if isinstance(item, str) and item not in PREFERENCE_MEANING:
                raise ValueError(f"unknown preference {item!r}: one of "
                                 f"{', '.join(PREFERENCE_MEANING)}, or a mapping such as "
                                 "{kernel: [B31f, B30*]} (also series_description, protocol_name)")
        return v

    @field_validator("model")
    @classmethod
    def _alias(cls, v: str) -> str:
        m = _MODEL_REF.match(v.strip())
        if not m:
            raise ValueError(f"{v!r} is not NAME@ALIAS: {ALIAS_HINT}")
        alias = m.group(2)
        if alias.isdigit():
            raise ValueError(f"{v!r} names version {alias}, not an alias: {ALIAS_HINT}")
        if alias.lower() == "latest":
            raise ValueError(f"{v!r}: 'latest' is not an approved alias: {ALIAS_HINT}")
        return v.strip()

    @field_validator("destinations")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        out = [s.strip() for s in v]
        if any(not s for s in out):
            raise ValueError("a destination name is empty")
        if len(set(out)) != len(out):
            raise ValueError("a destination is listed twice")
        return out


class RuleSet(_Strict):
    """All rules of one file."""

    rules: list[Rule] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for r in v:
            if r.name in seen:
                raise ValueError(f"two rules are named {r.name!r}")
            seen.add(r.name)
        return v

    def ordered(self) -> list[Rule]:
        """The rules in the order they are tried: priority (lower first), then file order."""
        return sorted(self.rules, key=lambda r: r.priority)  # sorted() is stable


# -- loading ----------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def profile_names(settings: Any) -> list[str]:
    """The output profiles a rule may name under ``settings``: built-in and configured."""
    return list(settings.export.all_profiles())


def parse_rules(text: str, *, source: str = "rules.yaml",
                profiles: typing.Iterable[str] | None = None) -> RuleSet:
    """Validate the YAML ``text`` into a :class:`RuleSet` (see the module docstring).

    ``profiles``: the output profile names a rule may use (:func:`profile_names` of the
    settings in force; default the built-in ones).  Raises :class:`InvalidInput` listing every
    problem with the file, line, rule and field.
    """
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"{where}: not valid YAML: {problem}", detail=[f"{where}: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"{source}:1: the file must be a mapping with a 'rules' list"
        raise InvalidInput(msg, detail=[msg])
    try:
        ctx = {"profiles": tuple(profiles)} if profiles is not None else None
        return RuleSet.model_validate(data, context=ctx)
    except ValidationError as exc:
        described = [_describe(err, data, root, source) for err in exc.errors()]
        lines = [text for _, text in sorted(described, key=lambda d: d[0])]
        raise InvalidInput(f"{source}: {len(lines)} problem(s) in the routing rules:\n"
                           + "\n".join(lines), detail=lines) from None


def load_rules(path: Path | str, *, profiles: typing.Iterable[str] | None = None) -> RuleSet:
    """Read and validate a rules file (``profiles`` as in :func:`parse_rules`); a missing file
    is an :class:`InvalidInput`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"no routing rules file at {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the routing rules file {p}: {exc}") from None
    return parse_rules(text, source=str(p), profiles=profiles)


def rules_path(settings: Any) -> Path:
    """The rules file the settings name: ``deploy.rules_file``, default ``<data_dir>/rules.yaml``."""
    configured = settings.deploy.rules_file
    return Path(configured) if configured is not None else Path(settings.data_dir) / "rules.yaml"


# -- error messages ---------------------------------------------------------------------------
def _describe(err: dict, data: dict, root: yaml.Node | None, source: str) -> tuple[int, str]:
    known = _known_keys(err["loc"])
    keep_last = err["type"] in ("extra_forbidden", "missing")
    loc = [p for k, p in enumerate(err["loc"]) if isinstance(p, int) or p in known
           or (keep_last and k == len(err["loc"]) - 1)]
    line = _line(root, loc)
    where = f"{source}:{line}" if line else source
    rule = ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        items = data.get("rules")
        name = None
        if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
            name = items[loc[1]].get("name")
        rule = f"rule {name!r}: " if isinstance(name, str) else f"rules[{loc[1]}]: "
        loc = loc[2:]
    field = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        msg = f"unknown key {err['loc'][-1]!r}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        field = field.rsplit(".", 1)[0] if "." in field else ""
    elif err["type"] == "missing":
        msg = f"required key {err['loc'][-1]!r} is missing"
        field = field.rsplit(".", 1)[0] if "." in field else ""
    return line or 0, f"{where}: {rule}{field + ': ' if field else ''}{msg}"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc`` (following fields and lists)."""
    cls: Any = RuleSet
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        if part not in cls.model_fields:
            continue  # a union member's tag (pydantic puts them in the location)
        cls = _model_in(cls.model_fields[part].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple) -> list[str]:
    cls = _model_at(loc)
    return list(cls.model_fields) if cls else []


def _known_keys(loc: tuple) -> set[str]:
    """Field names along ``loc`` (pydantic also puts union member tags in it)."""
    out: set[str] = set()
    for k in range(len(loc)):
        out.update(_allowed_keys(tuple(loc[:k])))
    return out


def _line(root: yaml.Node | None, loc: list) -> int | None:
    node, best = root, None
    for part in loc:
        if node is None:
            break
        best = node.start_mark.line + 1
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    best, nxt = k.start_mark.line + 1, v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            best = nxt.start_mark.line + 1
        node = nxt
    if node is not None and loc:
        best = node.start_mark.line + 1
    return best
