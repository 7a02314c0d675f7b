"""The AI result objects (results/): SEG, TID 1500 SR and SC key images (GSPS, KOS and PDF:
test_results_more_objects.py) built from a synthetic
chest CT with known nodules, checked by dciodvfy (dicom3tools), dsrdump (DCMTK) and highdicom's
readers, against the phantom's truth."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest

from hounsfield.errors import InvalidInput
from hounsfield.imaging import volume_from_datasets
from hounsfield.imaging.segment import Region, measure
from hounsfield.results import AIModel, build_results, series_content_key
from hounsfield.results.uids import derive_uid
from hounsfield.synth.ct import generate_ct

DCIODVFY = shutil.which("dciodvfy")
DSRDUMP = shutil.which("dsrdump")
WHEN = __import__("datetime").datetime(2024, 5, 6, 7, 8, 9)


def Finding(x: float, y: float, z: float, diameter: float, p: float) -> SimpleNamespace:  # noqa: N802
    """A duck-typed finding (results/ must not import the detector's class)."""
    return SimpleNamespace(x_mm=x, y_mm=y, z_mm=z, diameter_mm=diameter, probability=p)


@pytest.fixture(scope="module")
def ct():
    return generate_ct("jingdong", 1, shape=(160, 256, 256), nodules=5)


@pytest.fixture(scope="module")
def vol(ct):
    return volume_from_datasets(ct.datasets)


@pytest.fixture(scope="module")
def model():
    return AIModel("nodules", "3", "2.25.314159265358979323846264338327950288")


@pytest.fixture(scope="module")
def key(ct):
    return series_content_key([(d.SOPInstanceUID, f"sha-{i}") for i, d in enumerate(ct.datasets)])


def truth_findings(ct) -> list[SimpleNamespace]:
    return [Finding(t.coordX, t.coordY, t.coordZ, t.diameter_mm, round(0.95 - 0.1 * i, 2))
            for i, t in enumerate(ct.truth)]


@pytest.fixture(scope="module")
def results(ct, vol, model, key):
    return build_results(ct.datasets, vol, truth_findings(ct), model, input_key=key, created=WHEN)


def part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dciodvfy_errors(ds: pydicom.Dataset, tmp_path: Path) -> list[str]:
    p = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    p.write_bytes(part10(ds))
    out = subprocess.run([DCIODVFY, str(p)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


# -- UIDs -------------------------------------------------------------------------------------
def test_series_content_key_ignores_order_and_sees_content():
    pairs = [("1.2.3", "aa"), ("1.2.4", "bb")]
    assert series_content_key(pairs) == series_content_key(pairs[::-1])
    assert series_content_key(pairs) != series_content_key([("1.2.3", "aa"), ("1.2.4", "bc")])
    with pytest.raises(InvalidInput):
        series_content_key([])
    with pytest.raises(InvalidInput):
        series_content_key([("1.2.3", "aa"), ("1.2.3", "bb")])
    with pytest.raises(InvalidInput):
        series_content_key([("1.02.x", "aa")])


def test_derive_uid_is_a_valid_deterministic_2_25_uid(model):
    a = derive_uid("k", model.key, "SEG")
    assert a == derive_uid("k", model.key, "SEG")
    assert a.startswith("2.25.") and len(a) <= 64 and a[5:].isdigit()
    assert len({a, derive_uid("k", model.key, "SR"), derive_uid("k2", model.key, "SEG"),
                derive_uid("k", "nodules@4:2.25.1", "SEG")}) == 4
    with pytest.raises(InvalidInput):
        derive_uid("", model.key, "SEG")


def test_ai_model_refuses_bad_identity():
    with pytest.raises(InvalidInput):
        AIModel("nodules", "3", "not-a-uid")
    with pytest.raises(InvalidInput):
        AIModel("", "3", "2.25.1")


# -- the objects ------------------------------------------------------------------------------
def test_profile_all_makes_seg_sr_and_one_sc_per_finding(results, ct):
    kinds = [o.kind for o in results.objects]
    assert kinds == ["SEG", "SR"] + ["SC"] * len(ct.truth) + ["GSPS", "PDF", "KOS"]
    assert [f.label for f in results.findings] == [f"Nodule {i}" for i in range(1, len(ct.truth) + 1)]
    for o in results.objects:
        ds = o.dataset
        assert ds.StudyInstanceUID == ct.study_uid  # the source study
        assert ds.SeriesInstanceUID != ct.series_uid
        assert "AI" in ds.SeriesDescription.split() and "unreviewed" in ds.SeriesDescription
        (eq,) = [e for e in ds.ContributingEquipmentSequence if e.get("DeviceUID")]
        assert eq.DeviceUID == "2.25.314159265358979323846264338327950288"
        assert eq.ManufacturerModelName == "nodules" and eq.Manufacturer == "Hounsfield"
        assert "3" in list(eq.SoftwareVersions)
        assert eq.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
        assert "ContributionDateTime" in eq and eq.ContributionDescription


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(results, tmp_path):
    for o in results.objects:
        assert dciodvfy_errors(o.dataset, tmp_path) == [], o.kind


def test_seg_reads_back_with_one_segment_per_finding_and_no_empty_frames(results):
    (seg_ds,) = results.of_kind("SEG")
    seg = hd.seg.segread(io.BytesIO(part10(seg_ds)))
    assert seg.SegmentationType == "BINARY"
    assert seg.number_of_segments == len(results.findings)
    for f, item in zip(results.findings, seg.SegmentSequence, strict=True):
        assert item.SegmentLabel == f.label
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "nodules"
        assert item.TrackingUID == f.tracking_uid
        if f.boundary_found:
            assert "region grown" in item.SegmentDescription
        else:
            assert item.SegmentDescription == "no boundary found: sphere of the reported diameter"
    pixels = seg.pixel_array
    assert pixels.reshape(pixels.shape[0], -1).any(axis=1).all()  # no empty frame


def test_sr_reads_back_with_a_group_per_finding(results):
    (sr_ds,) = results.of_kind("SR")
    sr = hd.sr.srread(io.BytesIO(part10(sr_ds)))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(results.findings)
    (seg_ds,) = results.of_kind("SEG")
    for g, f in zip(groups, results.findings, strict=True):
        assert g.tracking_uid == f.tracking_uid
        assert str(g.tracking_identifier).endswith(f":{f.label}")
        assert g.finding_type.value == "27925004"
        assert [s.value.value for s in g.finding_sites] == ["39607008"]
        by_name = {m.name.value: m for m in g.get_measurements()}
        assert by_name["103339001"].value == pytest.approx(f.long_axis_mm, abs=0.01)
        assert by_name["118565006"].value == pytest.approx(f.volume_mm3, abs=0.1)
        assert by_name["111012"].value == pytest.approx(f.probability)
        assert by_name["111012"].unit.value == "{ratio}"
        assert g.reference_type.value == "111030"  # image region on the source image
        region = g.roi
        assert region.GraphicType == "POLYLINE"
        pts = np.asarray(region.GraphicData).reshape(-1, 2)
        assert np.allclose(pts[0], pts[-1])  # closed outline
        assert (region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                == f.source_sop_instance_uid)
        items = g[0].ContentSequence
        centre = [it for it in items if it.ValueType == "SCOORD3D"]
        assert len(centre) == 1 and centre[0].GraphicType == "POINT"
        assert np.allclose(centre[0].GraphicData, [f.x_mm, f.y_mm, f.z_mm], atol=1e-3)
        segs = [it for it in items if it.ValueType == "IMAGE"
                and it.ConceptNameCodeSequence[0].CodeValue == "121191"]
        ref = segs[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == seg_ds.SOPInstanceUID
        assert ref.ReferencedSegmentNumber == f.number
    observer = [it for it in sr.ContentSequence if it.RelationshipType == "HAS OBS CONTEXT"]
    values = {it.ConceptNameCodeSequence[0].CodeValue: it for it in observer}
    assert values["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # observer type: device
    assert values["121012"].UID == "2.25.314159265358979323846264338327950288"


@pytest.mark.skipif(DSRDUMP is None, reason="dsrdump (DCMTK) not installed")
def test_dsrdump_reads_the_sr_with_the_tracking_identifiers(results, tmp_path):
    (sr_ds,) = results.of_kind("SR")
    p = tmp_path / "sr.dcm"
    p.write_bytes(part10(sr_ds))
    out = subprocess.run([DSRDUMP, "+Pl", "+Pu", str(p)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Comprehensive 3D SR" in out.stdout
    for f in results.findings:
        assert f"PlanarFreehandROI:{f.label}\"" in out.stdout
        assert f.tracking_uid in out.stdout
    assert "All algorithms succeeded; with findings" in out.stdout


def test_sc_key_images_are_rgb_with_burned_in_annotation(results):
    scs = results.of_kind("SC")
    assert [f.key_image_sop_instance_uid for f in results.findings] == [s.SOPInstanceUID for s in scs]
    for sc, f in zip(scs, results.findings, strict=True):
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        assert sc.BurnedInAnnotation == "YES"
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == f.source_sop_instance_uid
        rgb = pydicom.dcmread(io.BytesIO(part10(sc))).pixel_array
        # the red banner at the bottom, the yellow outline/label somewhere
        assert (rgb[-5, :, 0] > 150).mean() > 0.5 and (rgb[-5, :, 1] < 80).mean() > 0.3
        yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 180) & (rgb[..., 2] < 60)
        assert yellow.sum() > 50
        assert f.label in sc.DerivationDescription and "not reviewed" in sc.DerivationDescription


# -- segmentation against the phantom's truth -------------------------------------------------
def test_isolated_solid_nodules_are_segmented_close_to_the_truth(ct, vol, results):
    by_label = {}
    checked = 0
    for t in ct.truth:
        f = min(results.findings, key=lambda r: np.hypot(r.x_mm - t.coordX, r.y_mm - t.coordY)
                + abs(r.z_mm - t.coordZ))
        by_label[t.label] = f
        if t.nodule_type != "solid" or t.location != "isolated" or t.diameter_mm < 6:
            continue
        checked += 1
        assert f.boundary_found, f.segmentation_note
        truth = ct.mask == t.label
        tm = measure(vol, Region(truth, (slice(0, None),) * 3, True, "truth"))
        assert f.volume_mm3 == pytest.approx(tm.volume_mm3, rel=0.25)
        assert f.long_axis_mm == pytest.approx(tm.long_axis_mm, rel=0.25)
    assert checked >= 1


def test_rerun_gives_identical_objects_and_another_model_other_uids(ct, vol, model, key, results):
    again = build_results(ct.datasets, vol, truth_findings(ct)[::-1], model, input_key=key,
                          created=WHEN)
    assert [o.sop_instance_uid for o in again.objects] == [o.sop_instance_uid for o in results.objects]
    assert [f.tracking_uid for f in again.findings] == [f.tracking_uid for f in results.findings]
    assert [part10(o.dataset) for o in again.objects] == [part10(o.dataset) for o in results.objects]
    other = build_results(ct.datasets, vol, truth_findings(ct), AIModel("nodules", "4", "2.25.99"),
                          input_key=key, profile_kinds={"SEG", "SR"}, created=WHEN)
    mine = {u for o in results.objects for u in (o.sop_instance_uid, o.series_instance_uid)}
    theirs = {u for o in other.objects for u in (o.sop_instance_uid, o.series_instance_uid)}
    assert not mine & theirs
    assert not {f.tracking_uid for f in other.findings} & {f.tracking_uid for f in results.findings}


def test_one_finding_references_its_segment_and_source_slices(ct, vol, model, key, tmp_path):
    """A SEG of one segment keeps Segment Identification in the shared functional groups;
    the SR's Referenced Segment must still name it and its slices (a one-nodule study)."""
    rs = build_results(ct.datasets, vol, truth_findings(ct)[:1], model, input_key=key,
                       created=WHEN)
    assert [o.kind for o in rs.objects] == ["SEG", "SR", "SC", "GSPS", "PDF", "KOS"]
    (seg,), (sr_ds,) = rs.of_kind("SEG"), rs.of_kind("SR")
    sr = hd.sr.srread(io.BytesIO(part10(sr_ds)))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    items = group[0].ContentSequence
    refs = [it for it in items if it.ConceptNameCodeSequence[0].CodeValue == "121191"]
    assert len(refs) == 1
    ref = refs[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID and ref.ReferencedSegmentNumber == 1
    slices = {str(d.SOPInstanceUID) for d in ct.datasets}
    srcs = [it for it in items if it.ConceptNameCodeSequence[0].CodeValue == "121233"]
    assert srcs and {it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for it in srcs} <= slices
    if DCIODVFY:
        for o in rs.objects:
            assert dciodvfy_errors(o.dataset, tmp_path) == [], o.kind


def test_no_findings_is_an_explicit_sr_and_key_image_without_seg(ct, vol, model, key, tmp_path):
    rs = build_results(ct.datasets, vol, [], model, input_key=key, created=WHEN)
    assert [o.kind for o in rs.objects] == ["SR", "SC", "PDF", "KOS"] and rs.no_findings
    (sr_ds,) = rs.of_kind("SR")
    sr = hd.sr.srread(io.BytesIO(part10(sr_ds)))
    assert sr.content.get_planar_roi_measurement_groups() == []
    values = [str(el.value) for el in sr_ds.iterall() if el.keyword in ("CodeValue", "TextValue")]
    assert "111241" in values and "No nodule found by nodules@3" in values
    assert "111242" not in values
    (sc,) = rs.of_kind("SC")
    assert "No nodule found" in sc.DerivationDescription
    if DCIODVFY:
        for o in rs.objects:
            assert dciodvfy_errors(o.dataset, tmp_path) == [], o.kind


def test_finding_in_air_or_on_the_border_falls_back_to_a_described_sphere(ct, vol, model, key,
                                                                          tmp_path):
    corner = vol.world((3, 3, vol.shape[0] // 2))          # outside the body: air
    edge = vol.world((vol.shape[2] // 2, vol.shape[1] // 2, 0))  # on the first slice
    rs = build_results(ct.datasets, vol, [Finding(*corner, 8.0, 0.7), Finding(*edge, 10.0, 0.6)],
                       model, input_key=key, profile_kinds="ai-ready", created=WHEN)
    air = rs.findings[0]
    assert not air.boundary_found and air.segmentation_note.startswith("no boundary found")
    assert air.volume_mm3 == pytest.approx(np.pi / 6 * 8.0 ** 3, rel=0.35)
    (seg_ds,) = rs.of_kind("SEG")
    descriptions = [s.SegmentDescription for s in seg_ds.SegmentSequence]
    assert descriptions[0] == "no boundary found: sphere of the reported diameter"
    assert rs.findings[1].volume_mm3 > 0
    if DCIODVFY:
        for o in rs.objects:
            assert dciodvfy_errors(o.dataset, tmp_path) == [], o.kind


def test_profiles_and_bad_findings(ct, vol, model, key):
    legacy = build_results(ct.datasets, vol, truth_findings(ct)[:1], model, input_key=key,
                           profile_kinds="legacy", created=WHEN)
    # the legacy profile: key images, their outlines as a presentation state, a key object
    # selection naming them, a PDF summary
    assert [o.kind for o in legacy.objects] == ["SC", "GSPS", "PDF", "KOS"]
    t = ct.truth[0]
    for bad in (Finding(t.coordX, t.coordY, t.coordZ, 5.0, 1.5),
                Finding(t.coordX, t.coordY, t.coordZ, 0.0, 0.5),
                Finding(t.coordX, t.coordY, t.coordZ + 10_000, 5.0, 0.5),
                Finding(float("nan"), t.coordY, t.coordZ, 5.0, 0.5)):
        with pytest.raises(InvalidInput):
            build_results(ct.datasets, vol, [bad], model, input_key=key, created=WHEN)
    with pytest.raises(InvalidInput):
        build_results(ct.datasets, vol, [], model, input_key=key, profile_kinds={"XRAY"})
    with pytest.raises(InvalidInput):
        build_results(ct.datasets[1:], vol, [], model, input_key=key)
