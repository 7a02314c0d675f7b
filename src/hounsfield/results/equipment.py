"""The model's identity in the result objects: Contributing Equipment (PS3.3 C.12.1, IHE AI
Results) and the series description, content label and creator name every result carries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hounsfield import __version__
from hounsfield.dicom.uids import validate_uid
from hounsfield.errors import InvalidInput
from hounsfield.results.uids import derive_uid

# CID 7005 "Contributing Equipment Purposes of Reference": the AI model processed the source
# images to make this object (DCM 109103 is "Modifying Equipment", which is not what it did).
PURPOSE_OF_REFERENCE = codes.DCM.ProcessingEquipment  # (109102, DCM, "Processing Equipment")


@dataclass(frozen=True)
class AIModel:
    """The model that made a result: registry name and version, the version's stable Device
    UID (new on every retrain), the manufacturer and Hounsfield's software version."""

    name: str
    version: str
    device_uid: str
    manufacturer: str = "Hounsfield"
    software_version: str = field(default=__version__)

    def __post_init__(self) -> None:
        for attr in ("name", "version", "manufacturer", "software_version"):
            v = getattr(self, attr)
            if not isinstance(v, str) or not v.strip():
                raise InvalidInput(f"AIModel.{attr} must be a non-empty string, got {v!r}")
            if len(v) > 64 or "\\" in v:
                raise InvalidInput(f"AIModel.{attr} must be <= 64 characters without '\\' "
                                   f"(a DICOM LO value), got {v!r}")
        ok, why = validate_uid(self.device_uid)
        if not ok:
            raise InvalidInput(f"AIModel.device_uid: {why}")

    @property
    def key(self) -> str:
        """``name@version:device_uid`` — the model part of every derived result UID."""
        return f"{self.name}@{self.version}:{self.device_uid}"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def software_versions(self) -> list[str]:
        """Software Versions (LO, multi-valued): the model version, then Hounsfield's."""
        return [self.version, f"hounsfield {self.software_version}"[:64]]


def instance_identity(model: AIModel, input_key: str, kind: str, series_number: int,
                      index: int = 1) -> dict[str, object]:
    """The highdicom constructor arguments naming one result instance: its derived series and
    SOP Instance UIDs (kind "SEG", "SR", "SC"; several SC are "SC-<index>"), series and
    instance numbers, manufacturer."""
    sop_kind = kind if kind != "SC" else f"SC-{index}"
    return {"series_instance_uid": derive_uid(input_key, model.key, f"series-{kind}"),
            "series_number": series_number,
            "sop_instance_uid": derive_uid(input_key, model.key, sop_kind),
            "instance_number": index,
            "manufacturer": model.manufacturer}


def contributing_equipment(model: AIModel, when: dt.datetime, description: str) -> Dataset:
    """One Contributing Equipment Sequence item for the model (IHE AIR: Manufacturer,
    Manufacturer's Model Name = model name, Software Versions = model version and Hounsfield
    version, Device UID, Purpose of Reference = Processing Equipment, Contribution DateTime and
    Description)."""
    item = hd.ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=PURPOSE_OF_REFERENCE,
        manufacturer_model_name=model.name,
        software_versions=model.software_versions,
        contribution_datetime=when,
        contribution_description=description[:1024],
    )
    item.DeviceUID = model.device_uid
    return item


def series_description(model: AIModel, what: str) -> str:
    """A series description that says AI and unreviewed, e.g. "AI nodules SEG — nodules@3
    (unreviewed)" (LO: at most 64 characters; the model label is shortened first)."""
    tail = " (unreviewed)"
    head = f"AI {what} — "
    room = 64 - len(head) - len(tail)
    label = model.label if len(model.label) <= room else model.label[: max(room - 1, 0)] + "…"
    return f"{head}{label}{tail}"[:64]


def content_label(kind: str) -> str:
    """Content Label (CS, 16 chars, upper case, digits, _): e.g. AI_NODULES_SEG."""
    return f"AI_NODULES_{kind}"[:16]


CONTENT_CREATOR = "Hounsfield^AI"
