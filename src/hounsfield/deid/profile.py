"""PS3.15 Annex E Basic Application Level Confidentiality Profile, as data, with its options.

The attribute table (Table E.1-1) lives in ``annex_e_table.txt`` beside this module; this module
parses it and resolves, for a tag and a set of :class:`DeidOptions`, the one action to apply:

* ``X`` remove, ``Z`` zero-length (or a dummy), ``D`` dummy value, ``K`` keep, ``C`` clean,
  ``U`` replace the UID (keyed hash, consistent everywhere).
* Compound actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) depend on the IOD's Type for the attribute,
  which varies by SOP class; we take the one that keeps every IOD valid: ``Z`` for X/Z,
  ``D`` for X/D, Z/D and X/Z/D, and for X/Z/U* (reference sequences) we keep the sequence and
  replace the UIDs inside (``U``).
* Attributes not in the table follow the rules of their class (:func:`class_action`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, Field
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import BaseTag

#: the edition of PS3.15 the table was transcribed from (see annex_e_table.txt)
EDITION = "DICOM PS3.15 2024 (Table E.1-1), via the innolitics/dicom-standard extract"

#: DCM codes for the profile and its options (PS3.16 CID 7050 De-identification Method)
CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information "
                                                     "Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


class SafePrivate(BaseModel):
    """One private attribute known to hold no identity (PS3.15 E.3.10)."""

    creator: str
    group: int
    element: int = Field(ge=0, le=0xFF, description="element offset within the creator's block")


#: a small allow-list of Table E.3.10-1 entries (extend in settings.deid.safe_private)
DEFAULT_SAFE_PRIVATE = [
    SafePrivate(creator="GEMS_PARM_01", group=0x0043, element=0x27),  # scan pitch ratio
    SafePrivate(creator="Philips Imaging DD 001", group=0x2001, element=0x03),  # diffusion b
    SafePrivate(creator="SIEMENS CSA HEADER", group=0x0029, element=0x08),  # CSA image type
]


class DeidOptions(BaseModel):
    """The profile options (PS3.15 E.3) this run applies."""

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    clean_descriptors: bool = False
    retain_safe_private: bool = False

    def codes(self) -> list[tuple[str, str]]:
        out = [CODES["basic"]]
        for name, on in self.model_dump().items():
            if on:
                out.append(CODES[name])
        return out


@dataclass(frozen=True)
class Rule:
    tag: str  # 8 hex digits, may contain X for repeating groups
    basic: str
    overrides: dict[str, str]
    name: str


_OPTION_FOR = {
    "device": "retain_device_identity",
    "institution": "retain_institution_identity",
    "patient": "retain_patient_characteristics",
    "descriptors": "clean_descriptors",
    "dates": "retain_longitudinal_modified_dates",
    "safe_private": "retain_safe_private",
}


@lru_cache(maxsize=1)
def table() -> dict[str, Rule]:
    """The parsed Table E.1-1, keyed by tag (``"00100010"``; masks like ``"60XX3000"``)."""
    text = resources.files("hounsfield.deid").joinpath("annex_e_table.txt").read_text("utf-8")
    rules: dict[str, Rule] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        tag, basic, opts, name = (p.strip() for p in line.split("|"))
        overrides: dict[str, str] = {}
        for tok in opts.split():
            if tok == "dates":
                overrides["dates"] = "C"
            else:
                k, _, v = tok.partition("=")
                overrides[k] = v
        rules[tag.upper()] = Rule(tag.upper(), basic, overrides, name)
    return rules


def rule_for(tag: int) -> Rule | None:
    t = table()
    key = f"{tag:08X}"
    r = t.get(key)
    if r is not None:
        return r
    group = tag >> 16
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return t["50XXXXXX"]
    if 0x6000 <= group <= 0x60FF and group % 2 == 0:
        return t.get(f"60XX{tag & 0xFFFF:04X}")
    return None


_COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}


def resolve(rule: Rule, options: DeidOptions) -> str:
    """The single action for ``rule`` under ``options`` (an enabled option wins)."""
    for opt, action in rule.overrides.items():
        name = _OPTION_FOR.get(opt)
        if name and getattr(options, name):
            return "C" if opt == "dates" else action
    return _COMPOUND.get(rule.basic, rule.basic)


#: VRs of free text that may carry identity
TEXT_VRS = {"LO", "LT", "SH", "ST", "UT", "UC", "AE"}
DATE_VRS = {"DA", "DT", "TM"}

#: UIDs that name classes or codes, not instances: never remapped
NON_INSTANCE_UID_KEYWORDS = {
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile",
    "CodingSchemeUID", "ContextGroupExtensionCreatorUID", "PrivateInformationCreatorUID",
    "AffectedSOPClassUID", "RequestedSOPClassUID", "RelatedGeneralSOPClassUID",
    "OriginalSpecializedSOPClassUID", "SOPClassesInStudy", "MappingResourceUID",
    "RetrieveAETitle", "ContextUID", "TemplateExtensionOrganizationUID",
}


def class_action(tag: BaseTag, vr: str, options: DeidOptions) -> str:
    """Action for a public attribute that Table E.1-1 does not list (its class's rule).

    Person names are zeroed; dates and times are removed (shifted under the modified-dates
    option); UIDs are replaced unless they name a class; attributes unknown to the data
    dictionary are removed (we cannot tell what they hold); everything else is kept — free
    text is kept after the identifiers of the data set are scrubbed from it.
    """
    if vr == "PN":
        return "Z"
    if vr in DATE_VRS:
        return "C" if options.retain_longitudinal_modified_dates else "X"
    if vr == "UI":
        return "K" if keyword_for_tag(tag) in NON_INSTANCE_UID_KEYWORDS else "U"
    try:
        dictionary_VR(tag)
    except KeyError:
        return "X"
    if vr in TEXT_VRS:
        return "S"  # scrub known identifiers
    return "K"
