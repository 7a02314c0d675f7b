"""GSPS, Key Object Selection, Encapsulated PDF and the IOCM rejection note (results/), built
from a synthetic chest CT with known nodules, checked with dciodvfy (dicom3tools), DCMTK's
dcmpschk / dcmp2pgm (the GSPS) and dsrdump (the KOS), pypdf (the PDF's text) and against the
source slices they must reference."""

from __future__ import annotations

import copy
import io
import shutil

import numpy as np
import pydicom
import pytest

from hounsfield.errors import InvalidInput
from hounsfield.imaging import volume_from_datasets
from hounsfield.results import AIModel, build_rejection_note, build_results, series_content_key
from hounsfield.results.findings import measure_findings
from hounsfield.results.pdf import build_pdf, transliterate
from hounsfield.results.source import SourceSeries
from hounsfield.results.sr import planar_outline
from hounsfield.synth.ct import generate_ct
from tests.unit.test_results_objects import WHEN, Finding, dciodvfy_errors, part10

DCIODVFY = shutil.which("dciodvfy")
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
pypdf = pytest.importorskip("pypdf")


@pytest.fixture(scope="module")
def ct():
    return generate_ct("jingdong", 3, shape=(96, 192, 192), nodules=4)


@pytest.fixture(scope="module")
def vol(ct):
    return volume_from_datasets(ct.datasets)


@pytest.fixture(scope="module")
def model():
    return AIModel("nodules", "3", "2.25.314159265358979323846264338327950288")


@pytest.fixture(scope="module")
def key(ct):
    return series_content_key([(d.SOPInstanceUID, f"sha-{i}") for i, d in enumerate(ct.datasets)])


@pytest.fixture(scope="module")
def findings(ct, vol):
    out = [Finding(t.coordX, t.coordY, t.coordZ, t.diameter_mm, round(0.95 - 0.1 * i, 2))
           for i, t in enumerate(ct.truth)]
    corner = vol.world((4, 4, vol.shape[0] // 2))  # outside the body: no boundary -> circle
    return [*out, Finding(*corner, 8.0, 0.3)]


@pytest.fixture(scope="module")
def rs(ct, vol, findings, model, key):
    return build_results(ct.datasets, vol, findings, model, input_key=key, created=WHEN)


def _text(pdf_ds: pydicom.Dataset) -> str:
    data = bytes(pdf_ds.EncapsulatedDocument)[: int(pdf_ds.EncapsulatedDocumentLength)]
    assert data.startswith(b"%PDF-") and data.rstrip(b"\0").endswith(b"%%EOF\n") or \
        data.rstrip().endswith(b"%%EOF")
    return "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages)


# -- order, identity, validity ------------------------------------------------------------------
def test_all_kinds_in_send_order_with_model_identity(rs, ct):
    kinds = [o.kind for o in rs.objects]
    n = len(rs.findings)
    assert kinds == ["SEG", "SR"] + ["SC"] * n + ["GSPS", "PDF", "KOS"]
    for o in rs.objects[-3:]:
        ds = o.dataset
        assert ds.StudyInstanceUID == ct.study_uid and ds.PatientID == ct.datasets[0].PatientID
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert "AI" in ds.SeriesDescription.split() and "unreviewed" in ds.SeriesDescription
        (eq,) = [e for e in ds.ContributingEquipmentSequence if e.get("DeviceUID")]
        assert eq.DeviceUID == "2.25.314159265358979323846264338327950288"
        assert eq.ManufacturerModelName == "nodules" and "3" in list(eq.SoftwareVersions)
    assert [o.sop_class_uid for o in rs.objects[-3:]] == [GSPS_CLASS, PDF_CLASS, KOS_CLASS]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_clean(rs, tmp_path):
    for o in rs.objects:
        if o.kind in ("GSPS", "KOS", "PDF"):
            assert dciodvfy_errors(o.dataset, tmp_path) == [], o.kind


def test_same_input_and_model_same_uids_and_bytes(ct, vol, findings, model, key, rs):
    again = build_results(ct.datasets, vol, findings[::-1], model, input_key=key, created=WHEN)
    for a, b in zip(rs.objects, again.objects, strict=True):
        assert (a.kind, a.sop_instance_uid, a.series_instance_uid) == \
            (b.kind, b.sop_instance_uid, b.series_instance_uid)
        if a.kind in ("GSPS", "KOS", "PDF"):
            assert part10(a.dataset) == part10(b.dataset), a.kind
    other = build_results(ct.datasets, vol, findings, AIModel("nodules", "4", "2.25.77"),
                          input_key=key, profile_kinds={"GSPS", "KOS", "PDF"}, created=WHEN)
    assert not {o.sop_instance_uid for o in other.objects} & {o.sop_instance_uid for o in rs.objects}


# -- GSPS -------------------------------------------------------------------------------------
def test_gsps_outlines_each_finding_on_its_source_slice(rs, ct, vol, findings, model, key):
    (gsps,) = rs.of_kind("GSPS")
    slices = {str(d.SOPInstanceUID): d for d in ct.datasets}
    (series,) = gsps.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct.series_uid
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedImageSequence}
    assert referenced == {f.source_sop_instance_uid for f in rs.findings}
    assert [l.GraphicLayer for l in gsps.GraphicLayerSequence] == ["AI_FINDINGS"]
    src = SourceSeries.of(ct.datasets, vol)
    measured = {m.tracking_uid: m for m in measure_findings(vol, findings, model, input_key=key)}
    seen = set()
    for ann in gsps.GraphicAnnotationSequence:
        assert ann.GraphicLayer == "AI_FINDINGS"
        (img,) = ann.ReferencedImageSequence
        on = str(img.ReferencedSOPInstanceUID)
        for g in ann.GraphicObjectSequence:
            f = next(r for r in rs.findings if r.tracking_uid == g.TrackingUID)
            assert on == f.source_sop_instance_uid  # the finding's own slice
            assert g.GraphicAnnotationUnits == "PIXEL"
            pts = np.asarray(g.GraphicData, dtype=float).reshape(-1, 2)
            if f.boundary_found:
                assert g.GraphicType == "POLYLINE" and np.allclose(pts[0], pts[-1])
                assert np.allclose(pts, planar_outline(src, measured[f.tracking_uid]), atol=1e-3)
                ds = slices[on]
                assert pts[:, 0].max() <= ds.Columns and pts[:, 1].max() <= ds.Rows
            else:
                assert g.GraphicType == "CIRCLE" and len(pts) == 2
                spacing = float(slices[on].PixelSpacing[1])
                r_mm = np.hypot(*(pts[1] - pts[0])) * spacing
                # the reported radius (at least one pixel: a circle stays visible)
                assert r_mm == pytest.approx(max(f.reported_diameter_mm / 2, spacing), rel=0.05)
            seen.add(f.tracking_uid)
        for t in ann.TextObjectSequence:
            assert "AI — not reviewed" in t.UnformattedTextValue
    assert seen == {f.tracking_uid for f in rs.findings}
    labels = " | ".join(t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence
                        for t in a.TextObjectSequence)
    for f in rs.findings:
        assert f"{f.label}: {f.long_axis_mm:.1f} mm, p={f.probability:.2f}" in labels
    assert any(f.boundary_found for f in rs.findings) and not all(f.boundary_found
                                                                  for f in rs.findings)
    (voi,) = gsps.SoftcopyVOILUTSequence
    src_ds = slices[next(iter(referenced))]
    if "WindowCenter" in src_ds:
        first = lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)  # noqa: E731
        assert float(voi.WindowCenter) == first(src_ds.WindowCenter)
        assert float(voi.WindowWidth) == first(src_ds.WindowWidth)


# -- KOS --------------------------------------------------------------------------------------
def test_kos_names_source_slices_key_images_and_the_gsps(rs):
    (kos,) = rs.of_kind("KOS")
    (gsps,) = rs.of_kind("GSPS")
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    images = [it for it in kos.ContentSequence if it.ValueType == "IMAGE"]
    named = [str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for it in images]
    sources = list(dict.fromkeys(f.source_sop_instance_uid for f in rs.findings))
    scs = [str(d.SOPInstanceUID) for d in rs.of_kind("SC")]
    assert named == sources + scs
    for it in images:
        ref = it.ReferencedSOPSequence[0]
        nested = ref.get("ReferencedSOPSequence")
        if str(ref.ReferencedSOPInstanceUID) in sources:
            assert nested[0].ReferencedSOPInstanceUID == gsps.SOPInstanceUID
            assert nested[0].ReferencedSOPClassUID == GSPS_CLASS
        else:
            assert nested is None
    evidence = {str(i.ReferencedSOPInstanceUID)
                for st in kos.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert set(named) | {gsps.SOPInstanceUID} <= evidence  # every reference resolves
    (text,) = [it.TextValue for it in kos.ContentSequence if it.ValueType == "TEXT"
               and it.ConceptNameCodeSequence[0].CodeValue == "113012"]  # Key Object Description
    assert "not reviewed" in text


# -- PDF --------------------------------------------------------------------------------------
def test_pdf_has_the_findings_table_model_and_key_images(rs, ct):
    (pdf,) = rs.of_kind("PDF")
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf" and pdf.Modality == "DOC"
    assert len(pdf.EncapsulatedDocument) % 2 == 0
    assert {str(i.ReferencedSOPInstanceUID) for i in pdf.SourceInstanceSequence} == \
        {f.source_sop_instance_uid for f in rs.findings}
    text = _text(pdf)
    for needle in ("AI-generated — not reviewed", "nodules version 3",
                   "2.25.314159265358979323846264338327950288", ct.study_uid,
                   f"{len(rs.findings)} finding(s)"):
        assert needle in text, needle
    for f in rs.findings:
        assert f"{f.x_mm:.1f}, {f.y_mm:.1f}, {f.z_mm:.1f}" in text
        assert f"{f.long_axis_mm:.1f}" in text and f"{f.probability:.2f}" in text
    data = bytes(pdf.EncapsulatedDocument)
    reader = pypdf.PdfReader(io.BytesIO(data))
    images = [im for p in reader.pages for im in p.images]
    assert len(images) == len(rs.findings)  # one key image per finding


def test_no_findings_pdf_page_and_kos_of_the_key_image(ct, vol, model, key, tmp_path):
    rs = build_results(ct.datasets, vol, [], model, input_key=key, created=WHEN,
                       profile_kinds="legacy")
    assert [o.kind for o in rs.objects] == ["SC", "PDF", "KOS"]  # no GSPS: nothing to outline
    (pdf,) = rs.of_kind("PDF")
    assert "No nodule found by nodules@3" in _text(pdf)
    (kos,) = rs.of_kind("KOS")
    (sc,) = rs.of_kind("SC")
    named = [it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
             for it in kos.ContentSequence if it.ValueType == "IMAGE"]
    assert named == [sc.SOPInstanceUID]
    if DCIODVFY:
        for o in rs.objects:
            assert dciodvfy_errors(o.dataset, tmp_path) == [], o.kind


@pytest.mark.parametrize("name", ["Иванов^Пётр", "山田^太郎=ヤマダ^タロウ", "Müller^Jürgen"])
def test_non_latin1_patient_names(ct, vol, findings, model, key, name, tmp_path):
    datasets = []
    for d in ct.datasets:
        c = copy.deepcopy(d)
        c.PatientName = name
        c.SpecificCharacterSet = "ISO_IR 192"
        datasets.append(c)
    src = SourceSeries.of(datasets, vol)
    measured = measure_findings(vol, findings[:1], model, input_key=key)
    ds = build_pdf(src, measured, model, input_key=key, when=WHEN)
    text = _text(ds)
    family = name.split("^")[0]
    assert family in text  # a Unicode font from /usr/share/fonts shows the name as it is
    # without any Unicode font: transliterated, said so, no crash
    bare = build_pdf(src, measured, model, input_key=key, when=WHEN, fonts=(), fallbacks=())
    t2 = _text(bare)
    assert transliterate(family) in t2
    if any(ord(ch) > 255 for ch in name):
        assert "transliterated" in t2
    if DCIODVFY:
        assert dciodvfy_errors(bare, tmp_path) == []


# -- superseded results -----------------------------------------------------------------------
def test_new_sr_names_its_predecessor(ct, vol, findings, model, key, rs, tmp_path):
    (old_sr,) = rs.of_kind("SR")
    refs = [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid,
             "series_instance_uid": o.series_instance_uid, "sop_class_uid": o.sop_class_uid}
            for o in rs.objects]
    new_key = series_content_key([(d.SOPInstanceUID, f"new-{i}") for i, d in
                                  enumerate(ct.datasets)])
    new = build_results(ct.datasets, vol, findings[:2], model, input_key=new_key, created=WHEN,
                        profile_kinds="ai-ready", predecessors=refs)
    (sr,) = new.of_kind("SR")
    (st,) = sr.PredecessorDocumentsSequence
    assert st.StudyInstanceUID == ct.study_uid
    (se,) = st.ReferencedSeriesSequence
    assert se.SeriesInstanceUID == old_sr.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in se.ReferencedSOPSequence] == [old_sr.SOPInstanceUID]
    if DCIODVFY:
        assert dciodvfy_errors(sr, tmp_path) == []


def test_rejection_note_lists_the_superseded_objects(rs, ct, model, key, tmp_path):
    old = [o.dataset for o in rs.objects]  # every SOP class we make
    note = build_rejection_note(old, model, input_key="new-input", when=WHEN)
    assert note.SOPClassUID == KOS_CLASS and note.StudyInstanceUID == ct.study_uid
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == \
        ("113001", "DCM", "Rejected for Quality Reasons")
    listed = {str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID): it.ValueType
              for it in note.ContentSequence if it.ValueType in ("IMAGE", "COMPOSITE")}
    assert set(listed) == {str(d.SOPInstanceUID) for d in old}
    by_series = {str(se.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID)
                                             for i in se.ReferencedSOPSequence}
                 for st in note.CurrentRequestedProcedureEvidenceSequence
                 for se in st.ReferencedSeriesSequence}
    for d in old:  # each with its series
        assert str(d.SOPInstanceUID) in by_series[str(d.SeriesInstanceUID)]
    again = build_rejection_note(old[::-1], model, input_key="new-input", when=WHEN)
    assert again.SOPInstanceUID == note.SOPInstanceUID
    assert build_rejection_note(old[:2], model, input_key="new-input", when=WHEN) \
        .SOPInstanceUID != note.SOPInstanceUID
    if DCIODVFY:
        assert dciodvfy_errors(note, tmp_path) == []
    with pytest.raises(InvalidInput):
        build_rejection_note([], model, input_key="k", when=WHEN)
    other = copy.deepcopy(old[0])
    other.StudyInstanceUID = "2.25.42"
    other.SOPInstanceUID = "2.25.43"
    with pytest.raises(InvalidInput):
        build_rejection_note([old[0], other], model, input_key="k", when=WHEN)


# -- dcmtk reads the presentation state ---------------------------------------------------------
@pytest.mark.skipif(not (shutil.which("dcmpschk") and shutil.which("dcmp2pgm")),
                    reason="dcmtk's dcmpschk / dcmp2pgm not installed")
def test_dcmtk_checks_and_applies_the_gsps(rs, ct, tmp_path):
    """dcmpschk (DCMTK's presentation-state checker) finds nothing wrong but the values it
    cannot read: its VR checker knows only the default repertoire, and our texts and the
    patient's names are UTF-8.  dcmp2pgm applies the GSPS to its first slice: the display is the
    slice's own window (the GSPS keeps the source series' window)."""
    import subprocess

    (gsps,) = rs.of_kind("GSPS")
    ps = tmp_path / "gsps.dcm"
    ps.write_bytes(part10(gsps))
    out = subprocess.run(["dcmpschk", str(ps)], capture_output=True, timeout=60)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    blocks = text.split("E: Error:")[1:]
    for block in blocks:
        value = next((ln for ln in block.splitlines() if "Attribute value   :" in ln), "")
        assert "does not conform to data type definition" in block and \
            any(ord(ch) > 127 for ch in value), block
    uid = str(gsps.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
              .ReferencedSOPInstanceUID)
    img = tmp_path / "slice.dcm"
    img.write_bytes(part10(next(d for d in ct.datasets if str(d.SOPInstanceUID) == uid)))
    with_ps, plain = tmp_path / "ps.pgm", tmp_path / "plain.pgm"
    r = subprocess.run(["dcmp2pgm", "-p", str(ps), str(img), str(with_ps)], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    subprocess.run(["dcmp2pgm", str(img), str(plain)], check=True, capture_output=True,
                   timeout=60)
    assert with_ps.read_bytes() == plain.read_bytes()


@pytest.mark.skipif(not shutil.which("dsrdump"), reason="dcmtk's dsrdump not installed")
def test_dsrdump_reads_the_kos_and_the_rejection_note(rs, model, tmp_path):
    import subprocess

    (kos,) = rs.of_kind("KOS")
    note = build_rejection_note([o.dataset for o in rs.objects], model, input_key="new",
                                when=WHEN)
    for ds, title in ((kos, "Of Interest"), (note, "Rejected for Quality Reasons")):
        p = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        p.write_bytes(part10(ds))
        out = subprocess.run(["dsrdump", "+Pl", "+Pu", str(p)], capture_output=True, timeout=60)
        text = out.stdout.decode("utf-8", "replace")
        assert out.returncode == 0, out.stderr
        assert "Key Object Selection Document" in text and title in text
        assert "not reviewed" in text or "withdrawn" in text
