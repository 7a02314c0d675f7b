"""Routing rules files: the schema, every kind of mistake with its line, and `rules validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hounsfield.cli.main import app
from hounsfield.config import load_settings
from hounsfield.deploy.rules import (ALIAS_HINT, PatternPreference, Range, TextMatch, load_rules,
                                     parse_rules, rules_path)
from hounsfield.errors import InvalidInput

EXAMPLE = """\
rules:
  - name: chest-ct-nodules
    priority: 10
    match:
      modality: [ct]
      body_part: [CHEST, LUNG]
      sop_class: [CTImageStorage, 1.2.840.10008.5.1.4.1.1.2.1]
      image_type: {all_of: [original, PRIMARY], none_of: [LOCALIZER]}
      series_description: {glob: ["*thorax*", "*chest*"], exclude: ["*mip*"]}
      protocol_name: {regex: "^(chest|thorax)"}
      kernel: ["B3*", "STANDARD"]
      slice_thickness_mm: {min: 0.5, max: 2.5}
      pixel_spacing_mm: {max: 1.0}
      slices: {min: 50}
      contrast: false
      calling_ae: [CT_SCANNER]
      site: [north]
      patient_age: {min: 18}
      orientation: [axial]
    prefer: [thinnest, most_slices, {kernel: ["B31f", "B30*"]}]
    model: nodules@production
    profile: all
    destinations: [pacs, archive2]
  - name: fallback
    model: nodules@staging
  - name: first
    priority: 1
    enabled: false
    model: other@production
"""


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        parse_rules(text, source="r.yaml")
    assert isinstance(exc.value.detail, list) and exc.value.detail
    assert all(line in exc.value.reason for line in exc.value.detail)
    return exc.value.detail


def test_example_parses_with_every_attribute():
    rs = parse_rules(EXAMPLE)
    r = rs.rules[0]
    m = r.match
    assert m.modality == ["CT"] and m.body_part == ["CHEST", "LUNG"]
    assert m.sop_class == ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"]
    assert m.image_type.all_of == ["ORIGINAL", "PRIMARY"] and m.image_type.none_of == ["LOCALIZER"]
    assert m.series_description.glob == ["*thorax*", "*chest*"]
    assert m.kernel == TextMatch(glob=["B3*", "STANDARD"])  # a bare list means glob
    assert m.slice_thickness_mm == Range(min=0.5, max=2.5) and m.slices.min == 50
    assert m.contrast is False and m.calling_ae == ["CT_SCANNER"] and m.patient_age.min == 18
    assert r.prefer[:2] == ["thinnest", "most_slices"]
    assert isinstance(r.prefer[2], PatternPreference) and r.prefer[2].rank("b30f") == 1
    assert r.profile == "all" and r.destinations == ["pacs", "archive2"]
    fallback = rs.rules[1]
    assert fallback.enabled and fallback.priority == 100 and fallback.profile == "ai-ready"
    assert fallback.prefer == ["thinnest", "most_slices"]
    assert [x.name for x in rs.ordered()] == ["first", "chest-ct-nodules", "fallback"]


def test_empty_file_is_no_rules():
    assert parse_rules("").rules == [] and parse_rules("rules: []\n").rules == []


@pytest.mark.parametrize("ref, why", [
    ("nodules", "is not NAME@ALIAS"),
    ("nodules@3", "names version 3, not an alias"),
    ("nodules@latest", "'latest' is not an approved alias"),
    ("@production", "is not NAME@ALIAS"),
    ("no des@production", "is not NAME@ALIAS"),
])
def test_model_must_be_an_alias(ref, why):
    (line,) = problems(f"rules:\n  - name: a\n    model: '{ref}'\n")
    assert line.startswith("r.yaml:3: rule 'a': model: ") and why in line and ALIAS_HINT in line


def test_unknown_keys_named_with_line_and_allowed_keys():
    lines = problems("rules:\n  - name: a\n    model: m@production\n    match:\n      modality: [CT]\n"
                     "      colour: red\n    destination: [pacs]\nextra: 1\n")
    assert lines[0].startswith("r.yaml:6: rule 'a': match: unknown key 'colour' (allowed: modality,")
    assert lines[1].startswith("r.yaml:7: rule 'a': unknown key 'destination' (allowed: name,")
    assert lines[2] == "r.yaml:8: unknown key 'extra' (allowed: rules)"


@pytest.mark.parametrize("body, expect", [
    ("slice_thickness_mm: {min: 3, max: 2}", "match.slice_thickness_mm: min 3 is above max 2"),
    ("slices: {}", "match.slices: a range needs min, max or both"),
    ("pixel_spacing_mm: {min: -1}", "match.pixel_spacing_mm.min: Input should be greater than or"),
    ("patient_age: [18, 90]", "match.patient_age: Input should be a valid dictionary"),
    ("slice_thickness_mm: {min: 1, maximum: 2}", "match.slice_thickness_mm: unknown key 'maximum'"),
])
def test_bad_ranges(body, expect):
    (line,) = problems(f"rules:\n  - name: a\n    model: m@production\n    match:\n      {body}\n")
    assert line.startswith("r.yaml:5: rule 'a': ") and expect in line


def test_bad_regex_and_empty_pattern():
    lines = problems("rules:\n  - name: a\n    model: m@production\n    match:\n"
                     "      series_description: {regex: '(thorax'}\n      protocol_name: {}\n")
    assert "r.yaml:5: rule 'a': match.series_description.regex: bad regular expression '(thorax'" in lines[0]
    assert lines[1] == "r.yaml:6: rule 'a': match.protocol_name: give glob, regex or exclude"


def test_other_mistakes():
    text = """\
rules:
  - name: a
    model: m@production
    profile: fancy
    prefer: [fastest]
    match: {sop_class: [NotAClass], orientation: [diagonal], contrast: maybe}
  - name: a
    model: m@production
    destinations: [pacs, pacs]
  - model: m@production
  - name: "bad name"
    model: m@production
    prefer: [{kernel: [B31f], protocol_name: [x]}]
"""
    lines = problems(text)
    joined = "\n".join(lines)
    assert ("r.yaml:4: rule 'a': profile: unknown output profile 'fancy': known profiles are "
            "ai-ready, legacy, all") in joined
    assert "r.yaml:5: rule 'a': prefer: unknown preference 'fastest'" in joined
    assert "r.yaml:6: rule 'a': match.sop_class: unknown SOP class 'NotAClass'" in joined
    assert "r.yaml:6: rule 'a': match.orientation[0]: Input should be 'axial'" in joined
    assert "r.yaml:6: rule 'a': match.contrast: Input should be a valid boolean" in joined
    assert "r.yaml:9: rule 'a': destinations: a destination is listed twice" in joined
    assert "r.yaml:10: rules[2]: required key 'name' is missing" in joined
    assert "r.yaml:11: rule 'bad name': name: String should match pattern" in joined
    assert "rule 'bad name': prefer[0]: a pattern preference names exactly one of" in joined
    assert lines == sorted(lines, key=lambda s: int(s.split(":")[1]))  # in file order


def test_duplicate_rule_names_and_duplicate_yaml_keys():
    (line,) = problems("rules:\n  - {name: a, model: m@production}\n  - {name: a, model: n@production}\n")
    assert "two rules are named 'a'" in line
    with pytest.raises(InvalidInput, match=r"r.yaml:4: not valid YAML: key 'model' is given twice"):
        parse_rules("rules:\n  - name: a\n    model: m@production\n    model: n@production\n",
                    source="r.yaml")


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(InvalidInput, match=r"r.yaml:3: not valid YAML"):
        parse_rules("rules:\n  - name: a\n   model: [\n", source="r.yaml")
    with pytest.raises(InvalidInput, match="must be a mapping with a 'rules' list"):
        parse_rules("- name: a\n", source="r.yaml")
    # YAML tags that would build objects are refused by the safe loader
    with pytest.raises(InvalidInput, match="not valid YAML"):
        parse_rules("rules: !!python/object/apply:os.system ['true']\n", source="r.yaml")


def test_text_match_semantics():
    t = TextMatch(glob=["*thorax*"], regex=r"\bchest\b", exclude=["*mip*"])
    assert t.reason("d", "THORAX 1mm") is None  # glob, case-insensitive
    assert t.reason("d", "Routine Chest") is None  # regex searched anywhere, case-insensitive
    assert t.reason("d", "Thorax MIP") == "d 'Thorax MIP' matches the excluded '*mip*'"
    assert t.reason("d", "Abdomen") == "d 'Abdomen' does not match '*thorax*' or /\\bchest\\b/"
    assert TextMatch(glob=["B3?f"]).reason("kernel", "B31f") is None
    assert TextMatch(glob=["B3?f"]).reason("kernel", "B31s") is not None  # the whole value
    assert TextMatch(exclude=["*lung*"]).reason("kernel", "") is None


def test_rules_path_and_load_rules(tmp_path: Path):
    s = load_settings(data_dir=tmp_path, profile="demo")
    assert rules_path(s) == tmp_path / "rules.yaml"
    other = tmp_path / "conf" / "routing.yaml"
    s2 = load_settings(data_dir=tmp_path, profile="demo", deploy={"rules_file": other})
    assert rules_path(s2) == other
    with pytest.raises(InvalidInput, match="no routing rules file at"):
        load_rules(other)
    other.parent.mkdir()
    other.write_text(EXAMPLE)
    assert len(load_rules(other).rules) == 3


def test_cli_rules_validate(tmp_path: Path):
    runner = CliRunner()
    good = tmp_path / "rules.yaml"
    good.write_text(EXAMPLE)
    res = runner.invoke(app, ["--data-dir", str(tmp_path), "rules", "validate"])
    assert res.exit_code == 0, res.output
    assert "chest-ct-nodules" in res.output and "nodules@production" in res.output
    assert res.output.index("first") < res.output.index("chest-ct-nodules") < res.output.index("fallback")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: a\n    model: nodules\n    match: {slices: {min: 9, max: 1}}\n")
    res = runner.invoke(app, ["rules", "validate", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:3: rule 'a': model: 'nodules' is not NAME@ALIAS" in res.output
    assert f"{bad}:4: rule 'a': match.slices: min 9 is above max 1" in res.output
    res = runner.invoke(app, ["rules", "validate", str(tmp_path / "none.yaml")])
    assert res.exit_code == 1 and "no routing rules file at" in res.output
