"""Grayscale Softcopy Presentation State (PS3.3 A.33.1, 1.2.840.10008.5.1.4.1.1.11.1) with the
findings' outlines and labels on the original slices, written with highdicom.

For PACS that display presentation states but neither SEG nor SR: the viewer shows the source
slice of each finding (the same key slice the SR's planar ROI and the SC key image use) with

* the finding's outline as a closed POLYLINE (PIXEL units, the region-growing boundary on that
  slice — the same outline as the SR's Image Region); a finding whose boundary was not found is
  drawn as a CIRCLE of the model's reported diameter around the detection point;
* a text label next to it: "Nodule 1: 6.2 mm, p=0.91 — AI — not reviewed";

all in one graphic layer "AI_FINDINGS", and the source series' own window (its first Window
Center / Width; the lung window for a CT that has none), so the slice looks as it does without
the presentation state.  No findings: no presentation state (nothing to outline; the SR, the
SC key image and the PDF say "no nodule found").
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from hounsfield.results.equipment import (CONTENT_CREATOR, AIModel, content_label,
                                          contributing_equipment, instance_identity,
                                          series_description)
from hounsfield.results.findings import MeasuredFinding
from hounsfield.results.sc import LUNG_WINDOW
from hounsfield.results.source import SourceSeries, stamp_time
from hounsfield.results.sr import planar_outline

SERIES_NUMBER = 9004
LAYER = "AI_FINDINGS"
NOT_REVIEWED = "AI — not reviewed"
#: the layer's colour (CIELab of the SC outline's yellow) for viewers that honour it
LAYER_COLOUR = (255, 215, 0)


def gsps_label(f: MeasuredFinding) -> str:
    """The text shown next to a finding's outline."""
    text = f"{f.label}: {f.measurements.long_axis_mm:.1f} mm, p={f.probability:.2f} — {NOT_REVIEWED}"
    return text if f.region.ok else text + " (no boundary: circle of the reported diameter)"


def _window(src: SourceSeries, ds: Dataset) -> tuple[float, float]:
    """The source series' window: the slice's first Window Center / Width, else the lung
    window for CT, else the slice's value range."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        if w >= 1:
            return c, w
    if src.volume.modality == "CT":
        return LUNG_WINDOW
    lo, hi = np.percentile(src.volume.array, [1, 99])
    return float((lo + hi) / 2), float(max(hi - lo, 1.0))


def _first(value) -> float:  # noqa: ANN001 - DS or a multi-valued DS
    if isinstance(value, MultiValue):
        return float(value[0])
    return float(value)


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm."""
    if "PixelSpacing" in ds:
        return float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])
    return 1.0, 1.0


def _centre_pixel(src: SourceSeries, f: MeasuredFinding) -> tuple[float, float]:
    """The detection point on the key slice as (column, row) pixel coordinates (pixel centres
    at +0.5, the presentation state's convention)."""
    ijk = np.linalg.solve(src.volume.affine[:3, :3], f.centre - src.volume.affine[:3, 3])
    return float(ijk[0]) + 0.5, float(ijk[1]) + 0.5


def finding_graphics(src: SourceSeries, f: MeasuredFinding) -> tuple[hd.pr.GraphicObject,
                                                                     hd.pr.TextObject]:
    """The outline (POLYLINE, or CIRCLE without a boundary) and the label of one finding."""
    rows, cols = src.volume.shape[1:]
    if f.region.ok:
        poly = planar_outline(src, f).astype(np.float64)
        graphic = hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=poly,
            units=hd.pr.AnnotationUnitsValues.PIXEL, tracking_id=f.label,
            tracking_uid=f.tracking_uid)
        (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
    else:
        cx, cy = _centre_pixel(src, f)
        dr, dc = _pixel_spacing(src.slices[f.slice_k])
        r = max(f.diameter_mm / 2 / dc, 1.0)
        cx, cy = float(np.clip(cx, 0, cols)), float(np.clip(cy, 0, rows))
        edge = (float(np.clip(cx + r, 0, cols)), cy)
        if edge[0] == cx:
            edge = (float(np.clip(cx - r, 0, cols)), cy)
        graphic = hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
            graphic_data=np.array([[cx, cy], edge], dtype=np.float64),
            units=hd.pr.AnnotationUnitsValues.PIXEL, tracking_id=f.label,
            tracking_uid=f.tracking_uid)
        x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
    # the label above the outline (below it when the outline touches the top), inside the image
    ax = float(np.clip((x0 + x1) / 2, 1, cols - 1))
    ay = float(y0 - 4 if y0 > 12 else min(y1 + 4, rows - 1))
    ax0, ay0 = float(np.clip(x1 + 4, 0, cols - 1)), float(np.clip(ay - 6, 0, rows - 1))
    text = hd.pr.TextObject(
        text_value=gsps_label(f), units=hd.pr.AnnotationUnitsValues.PIXEL,
        anchor_point=(ax, ay), anchor_point_visible=True,
        bounding_box=(ax0, ay0, float(cols), float(min(ay0 + 12, rows))),
        text_justification=hd.pr.TextJustificationValues.LEFT)
    return graphic, text


def build_gsps(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
               input_key: str, when: dt.datetime) -> Dataset:
    """The presentation state of ``findings`` (at least one) on their key slices of ``src``."""
    if not findings:
        raise ValueError("a presentation state needs at least one finding")
    by_slice: dict[int, list[MeasuredFinding]] = defaultdict(list)
    for f in findings:
        by_slice[f.slice_k].append(f)
    ks = sorted(by_slice)
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER, order=1, description=f"AI findings of {model.label} (not reviewed)"[:64],
        display_color=hd.color.CIELabColor.from_rgb(*LAYER_COLOUR))
    annotations = []
    for k in ks:
        graphics, texts = [], []
        for f in by_slice[k]:
            g, t = finding_graphics(src, f)
            graphics.append(g)
            texts.append(t)
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[src.slices[k]], graphic_layer=layer,
            graphic_objects=graphics, text_objects=texts))
    refs = [src.slices[k] for k in ks]
    centre, width = _window(src, refs[0])
    voi = hd.pr.SoftcopyVOILUTTransformation(
        window_center=centre, window_width=width,
        window_explanation="source series window" if "WindowCenter" in refs[0] else "lung")
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=refs,
        **instance_identity(model, input_key, "GSPS", SERIES_NUMBER),
        manufacturer_model_name=model.name,
        software_versions=model.software_versions,
        device_serial_number=model.device_uid[-16:],
        content_label=content_label("GSPS"),
        content_description=f"AI nodule outlines by {model.label}, not reviewed"[:64],
        graphic_annotations=annotations,
        graphic_layers=[layer],
        content_creator_name=CONTENT_CREATOR,
        voi_lut_transformations=[voi],
        contributing_equipment=[contributing_equipment(
            model, when, "AI nodule detection; outlines and labels on the source slices")],
    )
    gsps.SeriesDescription = series_description(model, "nodules GSPS")
    # General Series Laterality is Type 2C (paired body parts only): name the unpaired part
    gsps.BodyPartExamined = str(refs[0].get("BodyPartExamined", "") or "CHEST")
    gsps.SpecificCharacterSet = "ISO_IR 192"  # our texts and any patient name
    stamp_time(gsps, when)
    del gsps.ContentDate, gsps.ContentTime  # a presentation state has creation date/time
    gsps.PresentationCreationDate = when.strftime("%Y%m%d")
    gsps.PresentationCreationTime = when.strftime("%H%M%S.%f")
    return gsps
