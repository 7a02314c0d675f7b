"""Secondary Capture key images (PS3.3 A.8.1, SC Image Storage 1.2.840.10008.5.1.4.1.1.7),
RGB, with burned-in overlays, for PACS that show neither SEG nor SR.

One image per finding: its key slice of the source series (lung window for CT), the
segmentation outline, a label ("Nodule 1, 6.2 mm, p=0.91" — the long axis and the model's
probability; "(no boundary: sphere)" when the outline is the fallback) and a banner
"AI-generated — not reviewed". With no findings, one image of the middle slice that says
"No nodule found". Burned In Annotation YES; Image Type DERIVED\\SECONDARY; the source image is
named in the Source Image Sequence.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes
from pydicom.uid import ExplicitVRLittleEndian

from hounsfield.imaging.segment import outline
from hounsfield.results.equipment import (AIModel, contributing_equipment, instance_identity,
                                          series_description)
from hounsfield.results.findings import MeasuredFinding
from hounsfield.results.source import SourceSeries, stamp_time

SERIES_NUMBER = 9003
BANNER = "AI-generated — not reviewed"
MIN_SIZE = 512          # small images are enlarged (whole pixels) so the text stays legible
LUNG_WINDOW = (-600.0, 1500.0)   # centre, width (HU)
OUTLINE = (255, 215, 0)
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_FILES:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def label_text(f: MeasuredFinding) -> str:
    text = f"{f.label}, {f.measurements.long_axis_mm:.1f} mm, p={f.probability:.2f}"
    return text if f.region.ok else text + " (no boundary: sphere)"


def _window(plane: np.ndarray, modality: str) -> np.ndarray:
    if modality == "CT":
        c, w = LUNG_WINDOW
    else:
        lo, hi = np.percentile(plane, [1, 99])
        c, w = (lo + hi) / 2, max(hi - lo, 1e-6)
    g = np.clip((plane.astype(np.float64) - (c - w / 2)) / w, 0, 1)
    return (g * 255).round().astype(np.uint8)


def _orientation(ds: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions) from Image Orientation (Patient)."""
    iop = [float(v) for v in ds.ImageOrientationPatient]

    def letters(v: list[float]) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        order = np.argsort(-np.abs(v))
        out = "".join(names[a][0 if v[a] > 0 else 1] for a in order if abs(v[a]) > 0.25)
        return out[:3] or "L"

    return letters(iop[:3]), letters(iop[3:])


def render(src: SourceSeries, k: int, loops: list[np.ndarray], lines: list[str]) -> tuple[np.ndarray, int]:
    """RGB uint8 ``(rows, cols, 3)`` of slice ``k`` with the outlines, the text lines at the
    top left and the banner at the bottom; the integer enlargement factor."""
    plane = src.volume.array[k]
    grey = _window(plane, src.volume.modality)
    scale = max(1, -(-MIN_SIZE // max(grey.shape)))
    img = Image.fromarray(grey).convert("RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    width = max(1, img.width // 256)
    for loop in loops:
        draw.line([(float(x) * scale, float(y) * scale) for x, y in loop], fill=OUTLINE,
                  width=width, joint="curve")
    if loops:  # a ring around the finding, so that a small outline is found at a glance
        pts = np.vstack(loops) * scale
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.75 + 6 * width
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=OUTLINE, width=width)
    size = max(12, img.width // 32)
    font = _font(size)
    y = size // 2
    for line in lines:
        draw.text((size // 2 + 1, y + 1), line, fill=(0, 0, 0), font=font)
        draw.text((size // 2, y), line, fill=OUTLINE, font=font)
        y += int(size * 1.3)
    banner_h = int(size * 1.8)
    draw.rectangle([0, img.height - banner_h, img.width, img.height], fill=(180, 0, 0))
    tw = draw.textlength(BANNER, font=font)
    draw.text(((img.width - tw) / 2, img.height - banner_h + (banner_h - size) / 2 - 1), BANNER,
              fill=(255, 255, 255), font=font)
    return np.asarray(img, dtype=np.uint8), scale


def key_outlines(src: SourceSeries, f: MeasuredFinding) -> list[np.ndarray]:
    plane = np.zeros(src.volume.shape[1:], dtype=bool)
    plane[f.region.box[1], f.region.box[2]] = f.region.mask[f.slice_k - f.region.box[0].start]
    return outline(plane)


def build_sc(src: SourceSeries, k: int, loops: list[np.ndarray], lines: list[str],
             model: AIModel, *, input_key: str, when: dt.datetime, index: int) -> Dataset:
    """One SC image of slice ``k``; ``index`` (1-based) is its instance number and UID kind."""
    ref = src.slices[k]
    rgb, scale = render(src, k, loops, lines)
    spacing = [float(v) / scale for v in ref.PixelSpacing] if "PixelSpacing" in ref else None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        **instance_identity(model, input_key, "SC", SERIES_NUMBER, index),
        pixel_spacing=spacing,
        patient_orientation=_orientation(ref),
        series_description=series_description(model, "nodules key images"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(
            model, when, "AI nodule detection; key image with burned-in outline and label")],
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    # General Series Laterality is Type 2C (paired body parts only): name the unpaired part
    sc.BodyPartExamined = str(ref.get("BodyPartExamined", "") or "CHEST")
    sc.ManufacturerModelName = model.name
    sc.SoftwareVersions = model.software_versions
    sc.DerivationDescription = ("AI result overlay: " + "; ".join(lines) + "; " + BANNER)[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(
        sr_codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence = [item]
    stamp_time(sc, when)
    return sc


def build_key_images(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
                     input_key: str, when: dt.datetime) -> list[Dataset]:
    """One SC per finding, or one "No nodule found" image when there are none."""
    if not findings:
        k = len(src.slices) // 2
        return [build_sc(src, k, [], [f"No nodule found ({model.label})"], model,
                         input_key=input_key, when=when, index=1)]
    return [build_sc(src, f.slice_k, key_outlines(src, f), [label_text(f)], model,
                     input_key=input_key, when=when, index=f.number) for f in findings]
