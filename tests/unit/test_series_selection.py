"""Series selection and routing on real headers in a temporary archive (see routing_helpers)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from hounsfield.archive import Archive
from hounsfield.cli.main import app
from hounsfield.config import load_settings
from hounsfield.deploy.rules import parse_rules
from hounsfield.deploy.selection import calling_ae_of, patient_age_years, route, study_facts
from hounsfield.dicom.uids import derived_uid
from hounsfield.errors import NotFound
from hounsfield.synth.ct import generate_ct
from tests.unit.routing_helpers import (STUDY, ct, dose_sr, localizer, missing_slice,
                                        mixed_orientations, reformat, secondary_capture, store,
                                        three_plane)

CHEST = """\
rules:
  - name: brain-mr
    match: {modality: [MR]}
    model: brain@production
  - name: chest-ct
    match:
      modality: [CT]
      slice_thickness_mm: {max: 2.5}
    model: nodules@production
    profile: all
    destinations: [pacs]
"""


def rule(match: str = "{}", prefer: str | None = None, name: str = "r") -> object:
    text = f"rules:\n  - name: {name}\n    model: m@production\n    match: {match}\n"
    if prefer is not None:
        text += f"    prefer: {prefer}\n"
    return parse_rules(text)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One chest CT study with what scanners send besides the images a model reads."""
    a = Archive.open(load_settings(data_dir=tmp_path_factory.mktemp("full"), profile="demo"))
    thin = ct("thin", 3, n=10, step=1.0, description="Thorax 1.0 B31f")
    store(a, thin)
    store(a, ct("std", 2, n=8, step=2.0, description="Thorax 2.0 B70f", kernel="B70f"))
    store(a, localizer())
    store(a, reformat())
    store(a, missing_slice())
    store(a, mixed_orientations())
    store(a, three_plane())
    store(a, [dose_sr(thin[0])])
    store(a, [secondary_capture(thin[0])])
    yield a, {"thin": thin[0].SeriesInstanceUID}
    a.close()


def archive_with(tmp_path: Path, *series: list, source: str = "CT_SCANNER@10.1.2.3",
                 site: str | None = None) -> Archive:
    a = Archive.open(load_settings(data_dir=tmp_path / "var", profile="demo"))
    for s in series:
        store(a, s, source=source, site=site)
    return a


def test_full_study_chooses_the_thin_axial_series_and_says_why(full):
    a, uids = full
    d = route(a, STUDY, parse_rules(CHEST))
    assert d.outcome == "routed"
    assert (d.rule, d.model, d.profile, d.destinations) == ("chest-ct", "nodules@production", "all",
                                                           ("pacs",))
    assert d.series_uid == uids["thin"] and d.reason is None
    log = d.text()
    assert "rule brain-mr: modality CT, OT, SR are not MR" in log
    assert "chose series 3: axial 1 mm B31f, 10 slices (Thorax 1.0 B31f)" in log
    assert "skipped series 1: localizer" in log
    assert "passed over series 2: axial 2 mm B70f, 8 slices (Thorax 2.0 B70f); not preferred " \
           "(thinnest slices first)" in log
    assert "rejected series 4: missing slice between z=6 and z=10 (gap 4 mm, spacing 2 mm)" in log
    assert "skipped series 5: 5 mm reformat (ImageType DERIVED\\SECONDARY\\MPR)" in log
    assert "rejected series 6: mixed orientations: 4 axial, 4 coronal" in log
    assert "skipped series 9: localizer (3 images in 3 orientations)" in log
    assert "skipped series 997: dose report (X-Ray Radiation Dose SR Storage)" in log
    assert "skipped series 998: secondary capture" in log
    status = {v.label: v.status for v in d.series}
    assert status == {"series 1": "skipped", "series 2": "qualified", "series 3": "chosen",
                      "series 4": "broken", "series 5": "skipped", "series 6": "broken",
                      "series 9": "skipped", "series 997": "skipped", "series 998": "skipped"}


def test_study_facts_from_headers(full):
    a, _ = full
    st = study_facts(a, STUDY)
    assert st.modalities == ["CT", "OT", "SR"] and st.calling_aes == ["CT_SCANNER"]
    s3 = next(s for s in st.series if s.number == 3)
    assert (s3.kernel, s3.thickness, s3.geometry.frames, s3.geometry.orientation) == ("B31f", 1.0, 10, "axial")
    assert s3.image_type == ("ORIGINAL", "PRIMARY", "AXIAL") and s3.contrast_agent == ""
    with pytest.raises(NotFound):
        study_facts(a, "1.2.3.4")


def test_no_rule_matched_gives_the_reason_per_rule(full):
    a, _ = full
    rules = parse_rules("rules:\n  - {name: brain-mr, model: b@production, match: {modality: [MR]}}\n"
                        "  - {name: old, model: o@production, enabled: false}\n"
                        "  - {name: kids, model: k@production, match: {patient_age: {max: 16}}}\n")
    d = route(a, STUDY, rules)
    assert d.outcome == "unmatched" and d.rule is d.model is d.series_uid is None
    assert d.reason == ("no rule matched (brain-mr: modality CT, OT, SR are not MR; kids: patient "
                        "age 54, outside <= 16 years)")
    assert "rule old: disabled" in d.log
    assert route(a, STUDY, parse_rules("")).reason == "no rule matched: there are no routing rules"


def test_thick_only_study_matches_no_rule(tmp_path):
    a = archive_with(tmp_path, ct("thick", 2, n=6, step=5.0, description="Ax 5mm"), localizer())
    d = route(a, STUDY, parse_rules(CHEST))
    assert d.outcome == "unmatched"
    assert "rule chest-ct: no series qualifies: series 1: localizer; series 2: 5 mm slices, " \
           "outside <= 2.5 mm" in d.log
    a.close()


@pytest.mark.parametrize("broken, why", [
    (missing_slice, "series 4: missing slice between z=6 and z=10 (gap 4 mm, spacing 2 mm)"),
    (mixed_orientations, "series 6: mixed orientations: 4 axial, 4 coronal"),
])
def test_a_broken_series_fails_the_rule_with_the_reason(tmp_path, broken, why):
    a = archive_with(tmp_path, broken(), localizer(), reformat())
    d = route(a, STUDY, parse_rules(CHEST))
    assert d.outcome == "no-series" and d.rule == "chest-ct" and d.model == "nodules@production"
    assert d.series_uid is None
    assert d.reason == f"no series qualified for rule chest-ct: {why}"
    assert d.log[-1] == d.reason
    a.close()


def test_more_geometry_problems(tmp_path):
    two_missing = [ds for ds in ct("g2", 2, n=10) if float(ds.ImagePositionPatient[2]) not in (8.0, 10.0)]
    tilted = ct("tilt", 3, n=8)
    for i, ds in enumerate(tilted):
        ds.ImagePositionPatient = [-8.0, -8.0 + i * 0.7, i * 2.0]  # sheared: gantry tilt
    sizes = ct("size", 4, n=6)
    sizes[3].PixelSpacing = [0.5, 0.5]
    a = archive_with(tmp_path, two_missing, tilted, sizes)
    by = {v.label: v for v in route(a, STUDY, rule("{modality: [CT]}")).series}
    assert by["series 2"].reason == "2 missing slices between z=6 and z=12 (gap 6 mm, spacing 2 mm)"
    assert by["series 3"].reason == "gantry tilt 19.3 degrees (the slices are sheared)"
    assert by["series 4"].reason.startswith("differing PixelSpacing in one stack")
    a.close()


def test_real_single_slice_ct_is_not_a_volume(tmp_path):
    """pydicom's CT_small (a GE scanner's header): one slice, skipped with the reason."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    a = archive_with(tmp_path, [ds])
    d = route(a, ds.StudyInstanceUID, parse_rules(CHEST))
    assert d.outcome == "unmatched"
    assert f"series {ds.SeriesNumber}: 1 image: not a volume" in d.reason
    a.close()


def test_synthetic_chest_ct_routes_on_its_real_attributes(tmp_path):
    hanse = generate_ct("hanse", 3, shape=(8, 32, 32))  # B31f, 1 mm, no contrast, age 61
    lingnan = generate_ct("lingnan", 4, shape=(8, 32, 32))  # kernel B, 2.5 mm, contrast
    a = archive_with(tmp_path, hanse.datasets)
    store(a, lingnan.datasets, source="import:somewhere")
    rules = parse_rules("""\
rules:
  - name: contrast
    match: {contrast: true, protocol_name: "*+ contrast*"}
    model: c@production
  - name: plain-chest
    match:
      body_part: [CHEST]
      contrast: false
      kernel: {regex: "^B3"}
      protocol_name: {glob: ["chest*"]}
      patient_age: {min: 18, max: 90}
      calling_ae: [CT_SCANNER]
      orientation: [axial]
    model: p@production
""")
    d = route(a, hanse.study_uid, rules)
    assert d.rule == "plain-chest" and d.series_uid == hanse.series_uid
    assert "rule contrast: no series qualifies: series 2: protocol 'Chest routine' does not " \
           "match '*+ contrast*'" in d.log
    assert d.log[0].endswith("patient age 61; sent by CT_SCANNER; site local")
    d2 = route(a, lingnan.study_uid, rules)
    assert d2.rule == "contrast" and d2.series_uid == lingnan.series_uid
    a.close()


@pytest.mark.parametrize("match, reason", [
    ("{modality: [MR]}", "modality CT is not MR"),
    ("{body_part: [HEAD]}", "no BodyPartExamined (the rule wants HEAD)"),
    ("{study_description: '*abdomen*'}", "study description 'CT CHEST' does not match '*abdomen*'"),
    ("{calling_ae: [OTHER_CT]}", "sent by CT_SCANNER, not OTHER_CT"),
    ("{site: [north]}", "site local is not north"),
    ("{patient_age: {min: 60}}", "patient age 54, outside >= 60 years"),
    ("{sop_class: [EnhancedCTImageStorage]}",
     "series 2: SOP class CT Image Storage is not Enhanced CT Image Storage"),
    ("{image_type: {all_of: [ORIGINAL, HELICAL]}}", "series 2: ImageType ORIGINAL\\PRIMARY\\AXIAL lacks HELICAL"),
    ("{image_type: {none_of: [AXIAL]}}", "series 2: ImageType ORIGINAL\\PRIMARY\\AXIAL has AXIAL"),
    ("{series_description: {regex: 'lung$'}}", "series 2: series description 'AXIAL' does not match /lung$/"),
    ("{protocol_name: [chest*]}", "series 2: protocol (empty) does not match 'chest*'"),
    ("{kernel: {exclude: ['b3*']}}", "series 2: kernel 'B31f' matches the excluded 'b3*'"),
    ("{slice_thickness_mm: {min: 2.5}}", "series 2: 2 mm slices, outside >= 2.5 mm"),
    ("{pixel_spacing_mm: {max: 0.8}}", "series 2: pixel spacing 1 mm, outside <= 0.8 mm"),
    ("{slices: {min: 50, max: 600}}", "series 2: 8 slices, outside 50-600"),
    ("{contrast: true}", "series 2: no contrast (no ContrastBolusAgent"),
    ("{orientation: [coronal, sagittal]}", "series 2: axial (the rule takes coronal or sagittal)"),
])
def test_each_attribute_can_refuse(tmp_path, match, reason):
    a = archive_with(tmp_path, ct("one", 2, n=8))
    d = route(a, STUDY, rule(match))
    assert d.outcome == "unmatched" and reason in d.reason, d.reason
    a.close()


@pytest.mark.parametrize("match", [
    "{modality: [mr, ct], study_description: {regex: chest}}", "{calling_ae: [CT_SCANNER]}",
    "{site: [local]}", "{patient_age: {min: 50, max: 60}}",
    "{sop_class: [1.2.840.10008.5.1.4.1.1.2], image_type: {all_of: [axial], none_of: [derived]}}",
    "{series_description: AX*, kernel: [b31F], slice_thickness_mm: {min: 2, max: 2}}",
    "{pixel_spacing_mm: {min: 1, max: 1}, slices: {min: 8, max: 8}, contrast: false}",
    "{orientation: [axial]}",
])
def test_each_attribute_can_accept(tmp_path, match):
    a = archive_with(tmp_path, ct("one", 2, n=8))
    assert route(a, STUDY, rule(match)).outcome == "routed"
    a.close()


def test_calling_ae_and_age_helpers():
    assert calling_ae_of("CT_SCANNER@10.0.0.1") == "CT_SCANNER"
    assert calling_ae_of("STOW@127.0.0.1") == calling_ae_of("import:/x/y.dcm") == ""
    assert calling_ae_of("recovered ingest") == ""
    assert patient_age_years("045Y", "", "") == 45
    assert patient_age_years("006M", "", "") == 0.5
    assert patient_age_years("", "19700615", "20240614") == 53
    assert patient_age_years("", "19700615", "20240615") == 54
    assert patient_age_years("bad", "1970", "20240101") is None


def test_calling_ae_unknown_for_files(tmp_path):
    a = archive_with(tmp_path, ct("one", 2, n=8), source="import:one.dcm")
    d = route(a, STUDY, rule("{calling_ae: [CT_SCANNER]}"))
    assert "not sent by a DICOM peer (imported or STOW-RS; the rule takes CT_SCANNER)" in d.reason
    a.close()


def _series(**variants) -> list[list]:
    return [ct(seed, number, **kw) for seed, (number, kw) in variants.items()]


@pytest.mark.parametrize("prefer, winner, why", [
    ("[thinnest]", 3, "thinnest slices first"),
    ("[most_slices]", 4, "most slices first"),
    ("[{kernel: [b70*, b31*]}]", 4, "kernel in the order b70*, b31* first"),
    ("[{series_description: ['*1mm*']}, most_slices]", 3, "series_description in the order *1mm* first"),
    ("[lowest_number]", 2, "lowest series number first"),
    ("[newest]", 5, "latest series date/time first"),
    ("[finest_pixels]", 5, "smallest pixel spacing first"),
    ("[]", 2, "a tie: lowest series number, then UID"),
])
def test_preferences(tmp_path, prefer, winner, why):
    series = _series(
        a=(2, {"n": 6, "step": 2.0, "description": "Ax 2mm"}),
        b=(3, {"n": 8, "step": 1.0, "description": "Ax 1mm"}),
        c=(4, {"n": 12, "step": 1.5, "kernel": "B70f", "description": "Ax 1.5mm lung"}),
        d=(5, {"n": 6, "step": 2.0, "description": "Ax 2mm late", "SeriesTime": "120000",
               "PixelSpacing": [0.7, 0.7]}),
    )
    a = archive_with(tmp_path, *series)
    d = route(a, STUDY, rule("{modality: [CT]}", prefer))
    chosen = next(v for v in d.series if v.status == "chosen")
    assert chosen.label == f"series {winner}"
    assert any(v.reason and why in v.reason for v in d.series if v.status == "qualified"), d.text()
    a.close()


def test_preference_order_breaks_ties_in_turn(tmp_path):
    series = _series(a=(2, {"n": 8, "step": 1.0}), b=(3, {"n": 10, "step": 1.0}),
                     c=(4, {"n": 12, "step": 2.0}))
    a = archive_with(tmp_path, *series)
    d = route(a, STUDY, rule("{}", "[thinnest, most_slices]"))
    assert [v.label for v in d.series if v.status == "chosen"] == ["series 3"]
    reasons = {v.label: v.reason for v in d.series}
    assert reasons["series 2"] == "not preferred (most slices first)"
    assert reasons["series 4"] == "not preferred (thinnest slices first)"
    a.close()


def test_priority_then_file_order(full):
    a, _ = full
    rules = parse_rules("rules:\n  - {name: late, model: l@production}\n"
                        "  - {name: early, priority: 5, model: e@production}\n"
                        "  - {name: early-too, priority: 5, model: e2@production}\n")
    assert route(a, STUDY, rules).rule == "early"


def test_other_study_in_the_archive_is_not_mixed_in(tmp_path):
    other = derived_uid("routing", "other-study")
    a = archive_with(tmp_path, ct("one", 2, n=8), ct("two", 7, n=8, study=other, step=1.0))
    d = route(a, STUDY, parse_rules(CHEST))
    assert [v.label for v in d.series] == ["series 2"]
    a.close()


def test_cli_route_explain(tmp_path):
    data = tmp_path / "var"
    a = archive_with(tmp_path, ct("one", 2, n=8), localizer())
    a.close()
    rules = tmp_path / "rules.yaml"
    rules.write_text(CHEST)
    runner = CliRunner()
    res = runner.invoke(app, ["--data-dir", str(data), "route", "explain", STUDY, "--rules", str(rules)])
    assert res.exit_code == 0, res.output
    assert "chose series 2: axial 2 mm B31f, 8 slices (AXIAL)" in res.output
    assert "skipped series 1: localizer" in res.output
    assert "=> routed: rule chest-ct, model nodules@production, profile all" in res.output
    (data / "rules.yaml").write_text("rules:\n  - {name: mr, model: b@production, match: {modality: [MR]}}\n")
    res = runner.invoke(app, ["--data-dir", str(data), "route", "explain", STUDY])
    assert res.exit_code == 0, res.output
    assert "rule mr: modality CT is not MR" in res.output
    assert "=> no rule matched: recorded, no job" in res.output
    res = runner.invoke(app, ["--data-dir", str(data), "route", "explain", "1.2.3"])
    assert res.exit_code == 2 and "no study 1.2.3 in the archive" in res.output
    (data / "rules.yaml").write_text("rules:\n  - {name: mr, model: b}\n")
    res = runner.invoke(app, ["--data-dir", str(data), "route", "explain", STUDY])
    assert res.exit_code == 1 and "is not NAME@ALIAS" in res.output


def test_enhanced_multiframe_from_headers(tmp_path):
    """pydicom's eCT_Supplemental (Enhanced CT, geometry in functional groups): the header-only
    data set places the frames exactly where the full object does; emri_small (Enhanced MR
    without functional groups) is refused with the imaging core's own reason."""
    from hounsfield.deploy.selection import _header_dataset
    from hounsfield.imaging.series import stacks_of

    ect = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    emr = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    a = archive_with(tmp_path, [ect])
    store(a, [emr])
    (meta,) = study_facts(a, ect.StudyInstanceUID).series[0].headers
    ours, real = stacks_of([_header_dataset(meta)]), stacks_of([ect])
    assert [len(s.frames) for s in ours] == [len(s.frames) for s in real] == [2]
    for o, r in zip(ours, real, strict=True):
        assert (o.distances == r.distances).all()
        assert o.frames[0].spacing_ij == r.frames[0].spacing_ij
    d = route(a, ect.StudyInstanceUID, rule("{modality: [CT]}"))
    assert "derived image (ImageType DERIVED\\PRIMARY\\PERFUSION\\RCBF)" in d.reason
    d = route(a, emr.StudyInstanceUID, rule("{modality: [MR]}"))
    assert d.outcome == "no-series"
    assert "multi-frame image without per-frame geometry" in d.reason
    a.close()
