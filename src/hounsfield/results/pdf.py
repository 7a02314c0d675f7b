"""Encapsulated PDF (PS3.3 A.45.1, Encapsulated PDF Storage 1.2.840.10008.5.1.4.1.1.104.1): a
one-document summary of a run, for PACS and viewers that show documents but no AI objects.

highdicom has no Encapsulated PDF writer, so the data set is built on highdicom's SOPClass
base (Patient, General Study and SOP Common filled as in its own IODs) with the Encapsulated
Document Series, SC Equipment and Encapsulated Document modules set here.  The PDF is made
with fpdf2, offline: a Unicode TrueType font shipped by a Debian package when one is on disk
(DejaVu, Noto, Liberation), otherwise the PDF core font Helvetica with the text transliterated
to Latin-1 — the document then says so.  It has

* a header with patient, study and model (name, version, Device UID, Hounsfield version), and
  the banner "AI-generated — not reviewed";
* the findings table (number, location LPS mm, diameter, volume, probability, slice) — or a
  "No nodule found" statement when there are none;
* the key images: each finding's source slice rendered with its outline and label (the same
  rendering as the SC key images).

The source slices are named in the Source Instance Sequence; the PDF's dates are the job's
time, so a re-run with the same job time writes identical bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import highdicom as hd
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes
from pydicom.uid import ExplicitVRLittleEndian

from hounsfield import __version__
from hounsfield.results.equipment import AIModel, contributing_equipment, series_description
from hounsfield.results.findings import MeasuredFinding
from hounsfield.results.sc import key_outlines, label_text, render
from hounsfield.results.source import SourceSeries, stamp_time
from hounsfield.results.uids import derive_uid

# fpdf2 subsets the embedded fonts with fontTools, which logs every glyph list at INFO: dozens
# of lines per PDF in the server's log
logging.getLogger("fontTools").setLevel(logging.WARNING)

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
SERIES_NUMBER = 9006
TITLE = "AI nodule detection — summary"
BANNER = "AI-generated — not reviewed"
#: Unicode TrueType fonts shipped by Debian packages (fonts-dejavu-core, fonts-noto-core,
#: fonts-liberation), regular then bold; the first pair found is used
FONT_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
     "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
     "/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf"),
    ("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
     "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf"),
)
#: fallback fonts for what the main font lacks (CJK names: fonts-droid-fallback)
FALLBACK_FONTS: tuple[str, ...] = ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
                                   "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
KEY_IMAGE_PX = 512     # key images are embedded at most this size (JPEG)


def unicode_font(candidates: Sequence[tuple[str, str]] = FONT_CANDIDATES) -> tuple[str, str] | None:
    for regular, bold in candidates:
        if Path(regular).is_file():
            return regular, bold if Path(bold).is_file() else regular
    return None


@lru_cache(maxsize=16)
def _cmap(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(path, fontNumber=0, lazy=True).getBestCmap() or {})


def _coverage(paths: Sequence[str]) -> set[int]:
    """The code points the fonts ``paths`` have glyphs for."""
    return set().union(*(_cmap(p) for p in paths))


def transliterate(text: str) -> str:
    """Latin-1 text for the core fonts: accents kept where Latin-1 has them, dashes and
    quotes simplified, anything else (CJK, Cyrillic, ...) as '?'."""
    text = text.replace("—", "-").replace("–", "-").replace("’", "'").replace("…", "...")
    out = []
    for ch in text:
        try:
            ch.encode("latin-1")
            out.append(ch)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
            out.append(base or "?")
    return "".join(out)


def _person(value: object) -> str:
    """A DICOM person name as 'Family, Given' (every component group joined by ' = ')."""
    s = str(value or "")
    groups = [g for g in s.split("=") if g]
    return " = ".join(", ".join(p for p in g.split("^") if p) for g in groups) or "(no name)"


def _key_jpeg(src: SourceSeries, f: MeasuredFinding) -> bytes:
    rgb, _scale = render(src, f.slice_k, key_outlines(src, f), [label_text(f)])
    img = Image.fromarray(rgb)
    if max(img.size) > KEY_IMAGE_PX:
        img.thumbnail((KEY_IMAGE_PX, KEY_IMAGE_PX), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=False)
    return buf.getvalue()


def render_pdf(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
               when: dt.datetime,
               fonts: Sequence[tuple[str, str]] = FONT_CANDIDATES,
               fallbacks: Sequence[str] = FALLBACK_FONTS) -> tuple[bytes, bool]:
    """The summary PDF and whether some of its text had to be transliterated (no Unicode font,
    or characters no font on the system has)."""
    from fpdf import FPDF

    first = src.first
    pdf = FPDF(unit="mm", format="A4")
    pdf.set_creation_date(when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when)
    pdf.set_title(TITLE)
    pdf.set_author(f"{model.manufacturer} {model.label}")
    pdf.set_creator(f"hounsfield {__version__}")
    pdf.set_auto_page_break(auto=True, margin=15)
    font = unicode_font(fonts)
    replaced: list[str] = []
    if font:
        pdf.add_font("body", "", font[0])
        pdf.add_font("body", "B", font[1])
        # a fallback font (CJK: ~4 MB to parse) only for characters the main font lacks, in
        # the texts that come from the data (names, descriptions)
        data_text = "".join(str(first.get(k, "") or "") for k in (
            "PatientName", "PatientID", "AccessionNumber", "StudyDescription",
            "SeriesDescription")) + model.label
        lacking = {ord(ch) for ch in data_text} - _cmap(font[0])
        extra = [p for p in fallbacks if lacking and Path(p).is_file()
                 and not p.endswith(".ttc") and lacking & _cmap(p)]
        for i, p in enumerate(extra):
            pdf.add_font(f"fallback{i}", "", p)
        if extra:
            pdf.set_fallback_fonts([f"fallback{i}" for i in range(len(extra))],
                                   exact_match=False)
        covered = _coverage([font[0], *extra])
        family = "body"
    else:
        covered = set(range(256))
        family = "helvetica"

    def clean(t: str) -> str:
        out = "".join(ch if ord(ch) in covered or ch in "\n\t" else transliterate(ch)
                      for ch in t)
        if out != t:
            replaced.append(t)
        return out

    def text(t: str, size: float = 10, style: str = "", h: float = 5.5,
             colour: tuple[int, int, int] = (0, 0, 0)) -> None:
        pdf.set_font(family, style, size)
        pdf.set_text_color(*colour)
        pdf.multi_cell(0, h, clean(t), new_x="LMARGIN", new_y="NEXT")

    def banner() -> None:
        pdf.set_fill_color(180, 0, 0)
        pdf.set_text_color(255, 255, 255)
        pdf.set_font(family, "B", 12)
        pdf.cell(0, 9, clean(BANNER), fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        pdf.ln(2)

    pdf.add_page()
    text(TITLE, 16, "B", 9)
    banner()
    study_date = str(first.get("StudyDate", "") or "")
    text(f"Patient: {_person(first.get('PatientName'))}    ID: {first.get('PatientID', '')}    "
         f"Birth date: {first.get('PatientBirthDate', '') or '-'}    "
         f"Sex: {first.get('PatientSex', '') or '-'}")
    text(f"Study: {study_date or '-'}  accession {first.get('AccessionNumber', '') or '-'}  "
         f"{first.get('StudyDescription', '')}")
    text(f"Study Instance UID: {first.StudyInstanceUID}", 8)
    text(f"Series: {first.get('SeriesNumber', '')} {first.get('SeriesDescription', '')} "
         f"({src.volume.shape[0]} slices)  {first.SeriesInstanceUID}", 8)
    text(f"Model: {model.name} version {model.version}    Device UID: {model.device_uid}", 9, "B")
    text(f"Made by Hounsfield {model.software_version} on {when:%Y-%m-%d %H:%M} UTC. "
         "Findings are candidates for a radiologist to confirm or reject.", 9)
    translit = font is None or bool(replaced)
    if translit:
        text("Note: " + ("no Unicode font was found on this system" if font is None else
                          "no font on this system has some of the characters")
             + "; text is transliterated ('?' where no equivalent exists).", 8,
             colour=(120, 0, 0))
    pdf.ln(3)
    if not findings:
        text(f"No nodule found by {model.label}.", 14, "B", 8)
        text("The model found no finding at or above its operating point in this series. "
             "This is an AI result, not a radiologist's report.", 10)
    else:
        text(f"{len(findings)} finding(s)", 12, "B", 7)
        header = ("#", "Location L, P, S (mm)", "Diameter (mm)", "Volume (mm³)", "Probability",
                  "Slice")
        pdf.set_font(family, "", 9)
        pdf.set_fill_color(225, 225, 225)
        with pdf.table(col_widths=(8, 52, 26, 28, 24, 18), text_align="CENTER",
                       line_height=6) as table:
            table.row([clean(h) for h in header])
            for f in findings:
                c = f.centre
                inst = src.slices[f.slice_k].get("InstanceNumber", f.slice_k + 1)
                table.row([str(f.number), f"{c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}",
                           f"{f.measurements.long_axis_mm:.1f}",
                           f"{f.measurements.volume_mm3:.0f}", f"{f.probability:.2f}",
                           str(inst)])
        pdf.ln(2)
        notes = [f"{f.label}: {f.region.reason}" for f in findings if not f.region.ok]
        for n in notes:
            text(n, 8, colour=(90, 90, 90))
        text("Diameter: the long axis of the outline found by region growing from the "
             "detection point; volume: of that region.", 8, colour=(90, 90, 90))
        for i, f in enumerate(findings):
            if i % 2 == 0:
                pdf.add_page()
                banner()
            text(f"{f.label} — slice {src.slices[f.slice_k].get('InstanceNumber', f.slice_k + 1)}",
                 11, "B", 6)
            y = pdf.get_y()
            pdf.image(io.BytesIO(_key_jpeg(src, f)), x=pdf.l_margin, y=y, h=105)
            pdf.set_y(y + 107)
    return bytes(pdf.output()), font is None or bool(replaced)


def build_pdf(src: SourceSeries, findings: list[MeasuredFinding], model: AIModel, *,
              input_key: str, when: dt.datetime,
              fonts: Sequence[tuple[str, str]] = FONT_CANDIDATES,
              fallbacks: Sequence[str] = FALLBACK_FONTS) -> Dataset:
    """The Encapsulated PDF instance of the summary of ``findings`` on ``src``."""
    first = src.first
    data, translit = render_pdf(src, findings, model, when=when, fonts=fonts,
                                fallbacks=fallbacks)
    ds = hd.base.SOPClass(
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=derive_uid(input_key, model.key, "series-PDF"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=derive_uid(input_key, model.key, "PDF"),
        sop_class_uid=SOP_CLASS, instance_number=1, modality="DOC",
        manufacturer=model.manufacturer, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(model, "nodules PDF"),
        manufacturer_model_name=model.name, software_versions=model.software_versions)
    ds.copy_patient_and_study_information(first)
    ds.ContributingEquipmentSequence = [contributing_equipment(
        model, when, "AI nodule detection; PDF summary with findings table and key images"
        + ("; some text transliterated (characters no font on the system has)" if translit else ""))]
    ds.ConversionType = "SYN"           # SC Equipment: synthetic (generated) document
    ds.BurnedInAnnotation = "YES"       # it names the patient
    ds.DocumentTitle = TITLE
    ds.ConceptNameCodeSequence = []     # Type 2: no document-title code in CID 7020 fits
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    used = list({str(src.slices[f.slice_k].SOPInstanceUID): src.slices[f.slice_k]
                 for f in findings}.values()) or [src.slices[len(src.slices) // 2]]
    items = []
    for ref in used:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.SOPClassUID
        item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(
            sr_codes.DCM.SourceImageForImageProcessingOperation)]
        items.append(item)
    ds.SourceInstanceSequence = items
    ds.SpecificCharacterSet = "ISO_IR 192"  # our texts and any patient name
    stamp_time(ds, when)
    return ds
