"""Burned-in annotation: flagging and configurable pixel-region blanking (PS3.15 E.3.1, the
Clean Pixel Data Option).

An image is *flagged* when BurnedInAnnotation (0028,0301) is YES, when its modality routinely
burns text into the pixels (US, SC/OT, XC, ES — whatever BurnedInAnnotation says), or when it
is CR/DX/MG/PX/IO without an explicit BurnedInAnnotation NO.  A flagged image is cleaned only by
a :class:`PixelRegionRule` that matches its manufacturer / model / modality / size; the rule's
rectangles are set to 0 and the pixel data rewritten uncompressed.  Flagged images that no rule
cleaned are never exported (the engine reports them).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

ALWAYS_BURNED = {"US", "SC", "OT", "XC", "ES", "GM"}
OFTEN_BURNED = {"CR", "DX", "MG", "PX", "IO", "RF", "XA"}
SC_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture family


class PixelRegionRule(BaseModel):
    """Rectangles (x, y, width, height; pixels) to blank on matching images (glob patterns)."""

    manufacturer: str = "*"
    model: str = "*"
    modality: str = "*"
    rows: int | None = None
    columns: int | None = None
    regions: list[tuple[int, int, int, int]] = Field(default_factory=list)

    def matches(self, ds: Dataset) -> bool:
        def m(pattern: str, value: object) -> bool:
            return fnmatchcase(str(value or "").strip().upper(), pattern.strip().upper())

        return (m(self.manufacturer, ds.get("Manufacturer")) and m(self.model, ds.get("ManufacturerModelName"))
                and m(self.modality, ds.get("Modality"))
                and (self.rows is None or self.rows == ds.get("Rows"))
                and (self.columns is None or self.columns == ds.get("Columns")))


def burned_in_reason(ds: Dataset, *, has_pixels: bool | None = None) -> str:
    """Why this image may carry burned-in text ("" when it is not flagged)."""
    if not (("PixelData" in ds) if has_pixels is None else has_pixels):
        return ""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if burned == "YES":
        return "BurnedInAnnotation is YES"
    if modality in ALWAYS_BURNED or str(ds.get("SOPClassUID", "")).startswith(SC_CLASS_PREFIX):
        return f"modality {modality or 'SC'} routinely carries burned-in text"
    if modality in OFTEN_BURNED and burned != "NO":
        return f"modality {modality} without BurnedInAnnotation NO"
    return ""


def matching_rule(ds: Dataset, rules: list[PixelRegionRule]) -> PixelRegionRule | None:
    for r in rules:
        if r.regions and r.matches(ds):
            return r
    return None


def blank_regions(ds: Dataset, rule: PixelRegionRule) -> None:
    """Zero the rule's rectangles in every frame; pixel data rewritten native (uncompressed)."""
    ts = ds.file_meta.TransferSyntaxUID if getattr(ds, "file_meta", None) else None
    if ts is not None and ts.is_compressed:
        ds.decompress()
    arr = ds.pixel_array.copy()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    view = arr if frames > 1 else arr[None]
    for x, y, w, h in rule.regions:
        if samples > 1:
            view[:, y:y + h, x:x + w, :] = 0
        else:
            view[:, y:y + h, x:x + w] = 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
