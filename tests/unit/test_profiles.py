"""PACS-compatibility profiles without peers: resolution and per-destination overrides, bad
profiles refused with clear messages, the kinds a job builds, transfer-syntax conversion
(pydicom's reference files: every stored syntax into every syntax we write), and the
pre-flight's reading of an SCP's answers."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.presentation import build_context

from hounsfield.config import load_settings
from hounsfield.deploy import rules_store
from hounsfield.deploy.rules import parse_rules
from hounsfield.dicom.transfer import Unconvertible, convert, fit_to_contexts
from hounsfield.errors import ConfigurationError, InvalidInput, PeerError
from hounsfield.pacs import preflight
from hounsfield.pacs.profiles import (
    RESULT_SOP_CLASSES,
    STORAGE_COMMITMENT_PUSH,
    effective,
    job_kinds,
)
from tests.helpers import free_port
from tests.web_data import ct_series, seg_of, sr_of, to_bytes

DIMSE = {"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
STOW = {"kind": "stowrs", "url": "http://127.0.0.1:1/dicom-web"}
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _settings(tmp_path, destinations: dict, profiles: dict | None = None):  # noqa: ANN001, ANN202
    return load_settings(data_dir=tmp_path, profile="demo",
                         export={"destinations": destinations, "profiles": profiles or {}})


# -- resolution and overrides ----------------------------------------------------------------
def test_builtin_profiles_and_overrides(tmp_path):
    s = _settings(tmp_path, {
        "modern": DIMSE,
        "old": {**DIMSE, "profile": "legacy"},
        "old-committed": {**DIMSE, "profile": "legacy", "storage_commitment": True,
                          "transfer_syntaxes": [ImplicitVRLittleEndian], "supersede": "iocm"},
        "web": {**STOW, "profile": "legacy", "storage_commitment": True},
    })
    m = effective(s, "modern")
    assert (m.kinds, m.transfer_syntaxes, m.storage_commitment, m.supersede, m.kind) == (
        {"SEG", "SR"}, (), False, "version", "dimse")
    o = effective(s, "old")
    assert o.kinds == {"SC", "GSPS", "KOS", "PDF"}
    assert o.transfer_syntaxes == (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    c = effective(s, "old-committed")
    assert c.transfer_syntaxes == (ImplicitVRLittleEndian,)
    assert c.storage_commitment and c.supersede == "iocm" and c.kinds == o.kinds
    assert not effective(s, "web").storage_commitment  # a DIMSE service: off for STOW-RS
    with pytest.raises(InvalidInput, match="unknown export destination 'nope'"):
        effective(s, "nope")


def test_configured_profile_replaces_and_adds(tmp_path):
    s = _settings(tmp_path, {"a": {**DIMSE, "profile": "sc-only"}, "b": {**DIMSE, "profile": "legacy"}},
                  profiles={"sc-only": {"objects": ["sc", "KOS"], "storage_commitment": True,
                                        "transfer_syntaxes": [RLELossless]},
                            "legacy": {"objects": ["SC"]}})
    a = effective(s, "a")
    assert a.kinds == {"SC", "KOS"} and a.storage_commitment
    assert a.transfer_syntaxes == (RLELossless,)
    assert effective(s, "b").kinds == {"SC"}  # [export.profiles.legacy] replaced the built-in


@pytest.mark.parametrize(("export", "message"), [
    ({"profiles": {"p": {"objects": ["SEG", "MESH"]}}}, r"unknown result kind\(s\) \['MESH'\]"),
    ({"profiles": {"p": {"objects": []}}}, "at least 1 item"),
    ({"profiles": {"p": {"objects": ["SC"], "fancy": 1}}}, "fancy"),
    ({"destinations": {"d": {**DIMSE, "profile": "fancy"}}},
     "export destination 'd': unknown output profile 'fancy': known profiles are "
     "ai-ready, legacy, all"),
    ({"profiles": {"p": {"objects": ["SC"], "transfer_syntaxes": ["explicit"]}}},
     "transfer syntaxes must be UIDs"),
    ({"profiles": {"p": {"objects": ["SC"], "transfer_syntaxes": ["1.2.840.10008.5.1.4.1.1.7"]}}},
     r"not a transfer syntax UID \(PS3.6 Annex A\): 1.2.840.10008.5.1.4.1.1.7 "
     r"\(Secondary Capture Image Storage\)"),
    ({"profiles": {"p": {"objects": ["SC"], "transfer_syntaxes": ["1.2.3.4"]}}},
     "not a transfer syntax UID"),
    ({"profiles": {"p": {"objects": ["SC"],
                         "transfer_syntaxes": [ExplicitVRLittleEndian, ExplicitVRLittleEndian]}}},
     "listed twice"),
    ({"destinations": {"d": {**DIMSE, "transfer_syntaxes": ["1.2.840.10008.1.20.1"]}}},
     "not a transfer syntax UID"),
])
def test_bad_profiles_are_refused_clearly(tmp_path, export, message):
    with pytest.raises(ConfigurationError, match=message):
        load_settings(data_dir=tmp_path, profile="demo", export=export)


def test_rules_may_name_configured_profiles_checked_against_the_settings(tmp_path):
    s = _settings(tmp_path, {"pacs": DIMSE}, profiles={"sc-only": {"objects": ["SC"]}})
    text = ("rules:\n  - name: chest\n    model: m@production\n    profile: sc-only\n"
            "    destinations: [pacs]\n")
    assert rules_store.check(s, text).rules[0].profile == "sc-only"
    # without the settings only the built-in profiles are known
    with pytest.raises(InvalidInput, match=r"r.yaml:4: rule 'chest': profile: unknown output "
                                           r"profile 'sc-only': known profiles are ai-ready, "
                                           r"legacy, all"):
        parse_rules(text, source="r.yaml")
    with pytest.raises(InvalidInput, match="unknown output profile 'nope'.*sc-only"):
        rules_store.check(s, text.replace("sc-only", "nope"))


def test_a_job_builds_what_every_destination_needs(tmp_path):
    s = _settings(tmp_path, {"modern": DIMSE, "old": {**DIMSE, "profile": "legacy"}},
                  profiles={"pdf": {"objects": ["PDF"]}})
    assert job_kinds(s, "ai-ready", ["modern"]) == {"SEG", "SR"}
    assert job_kinds(s, "ai-ready", ["modern", "old"]) == {"SEG", "SR", "SC", "GSPS", "KOS", "PDF"}
    assert job_kinds(s, "pdf", []) == {"PDF"}
    assert job_kinds(s, "ai-ready", ["gone"]) == {"SEG", "SR"}  # its export reports it


# -- conversion between transfer syntaxes ----------------------------------------------------
def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                    RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_convert_from_explicit_is_lossless_and_consistent(target):
    ref = _ct().pixel_array.copy()
    out, how = convert(_ct(), target)
    assert out.file_meta.TransferSyntaxUID == target and how.startswith("transcoded Explicit")
    # written and read back: encoding and File Meta agree (what pynetdicom checks)
    assert out.original_encoding == (target == ImplicitVRLittleEndian, True)
    assert np.array_equal(out.pixel_array, ref)
    assert out.SOPInstanceUID == _ct().SOPInstanceUID  # the same instance, re-encoded


@pytest.mark.parametrize(("name", "target"), [
    ("MR_small_RLE.dcm", ExplicitVRLittleEndian), ("MR_small_jp2klossless.dcm", ImplicitVRLittleEndian),
    ("MR_small_jpeg_ls_lossless.dcm", RLELossless), ("MR_small_implicit.dcm", JPEG2000Lossless)])
def test_convert_compressed_and_between_codecs(name, target):
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    src = pydicom.dcmread(get_testdata_file(name))
    sop = src.SOPInstanceUID
    out, how = convert(src, target)
    assert out.file_meta.TransferSyntaxUID == target and "transcoded" in how
    assert out.SOPInstanceUID == sop
    assert np.array_equal(out.pixel_array, ref)


def test_convert_refuses_what_cannot_be_written():
    assert convert(_ct(), ExplicitVRLittleEndian)[1] == ""  # as stored: untouched
    with pytest.raises(Unconvertible, match="no lossless encoder for JPEG Baseline"):
        convert(_ct(), JPEGBaseline8Bit)
    with pytest.raises(Unconvertible, match="Big Endian is retired"):
        convert(_ct(), ExplicitVRBigEndian)
    with pytest.raises(Unconvertible, match="not a transfer syntax"):
        convert(_ct(), "1.2.840.10008.5.1.4.1.1.7")


def test_results_without_pixels_and_binary_seg():
    cts = ct_series(3, 32, seed="profiles-conv")
    sr = pydicom.dcmread(io.BytesIO(to_bytes(sr_of(cts))))
    out, how = convert(sr, JPEGLSLossless)  # PS3.5 A.4: explicit VR LE under any syntax
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless and "no pixel data" in how
    seg = pydicom.dcmread(io.BytesIO(to_bytes(seg_of(cts))))
    out, _ = convert(seg, ImplicitVRLittleEndian)
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(out.pixel_array, seg.pixel_array)
    fresh = pydicom.dcmread(io.BytesIO(to_bytes(seg_of(cts))))
    with pytest.raises(Unconvertible, match="cannot convert .* -> RLE Lossless: ValueError"):
        convert(fresh, RLELossless)  # 1-bit BINARY pixels: the encoder refuses, saying why


def test_fit_to_contexts_follows_the_profile_order():
    def accepted(sop: str, *syntaxes: str):  # noqa: ANN202
        out = []
        for n, ts in enumerate(syntaxes):
            cx = build_context(sop, [ts])
            cx._as_scp = False
            cx.context_id, cx.result = 2 * n + 1, 0
            out.append(cx)
        return out

    ct = _ct()
    sop = str(ct.SOPClassUID)
    cxs = accepted(sop, ImplicitVRLittleEndian, RLELossless)
    out, how = fit_to_contexts(ct, cxs, preferred=[RLELossless, ImplicitVRLittleEndian])
    assert out.file_meta.TransferSyntaxUID == RLELossless and "RLE" in how
    out, _ = fit_to_contexts(_ct(), cxs)  # no profile: uncompressed first
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    with pytest.raises(Unconvertible, match="peer accepts JPEG Baseline"):
        fit_to_contexts(_ct(), accepted(sop, JPEGBaseline8Bit), preferred=[JPEGBaseline8Bit])
    with pytest.raises(PeerError, match="no presentation context"):
        fit_to_contexts(_ct(), accepted("1.2.840.10008.5.1.4.1.1.4", ImplicitVRLittleEndian))


# -- the pre-flight --------------------------------------------------------------------------
def test_preflight_proposes_every_class_in_every_profile_syntax(tmp_path):
    s = _settings(tmp_path, {"old": {**DIMSE, "profile": "legacy", "storage_commitment": True},
                             "modern": DIMSE})
    pairs = preflight.proposal(effective(s, "old"))
    classes = {RESULT_SOP_CLASSES[k] for k in ("SC", "GSPS", "KOS", "PDF")}
    assert {p for p, _ in pairs} == classes | {STORAGE_COMMITMENT_PUSH}
    assert len(pairs) == 2 * 5
    # no syntaxes in the profile: what our objects are stored in, plus implicit
    assert {ts for _, ts in preflight.proposal(effective(s, "modern"))} == {
        ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def test_preflight_reads_the_scp_answers(tmp_path):
    s = _settings(tmp_path, {"all": {**DIMSE, "profile": "all", "storage_commitment": True}})
    eff = effective(s, "all")
    seg, sr, sc = (RESULT_SOP_CLASSES[k] for k in ("SEG", "SR", "SC"))
    answers = [(seg, ExplicitVRLittleEndian, 3), (seg, ImplicitVRLittleEndian, 3),
               (sr, ExplicitVRLittleEndian, 4), (sr, ImplicitVRLittleEndian, 0),
               (sc, ExplicitVRLittleEndian, 0), (sc, ImplicitVRLittleEndian, 0),
               (STORAGE_COMMITMENT_PUSH, ExplicitVRLittleEndian, 1),
               (STORAGE_COMMITMENT_PUSH, ImplicitVRLittleEndian, None)]
    accepted, refused, warnings = preflight.summarize(eff, answers, peer="PACS@h:104")
    assert {a["kind"]: a["transfer_syntaxes"] for a in accepted} == {
        "SR": [ImplicitVRLittleEndian], "SC": [ExplicitVRLittleEndian, ImplicitVRLittleEndian]}
    assert {r["kind"]: r["reason"] for r in refused} == {
        "SEG": "abstract syntax not supported (provider rejection)",
        "commitment": "user rejection; no answer"}
    assert len(warnings) == 2
    assert warnings[0].startswith("the profile 'all' sends SEG (Segmentation Storage), which "
                                  "PACS@h:104 refuses (abstract syntax not supported")
    assert "recorded as not delivered" in warnings[0]
    assert "waits for Storage Commitment" in warnings[1] and "cannot be committed" in warnings[1]


def test_stow_preflight_is_not_checkable_and_results_are_kept(tmp_path):
    from hounsfield.archive import Archive

    port = free_port()  # nothing listens there
    s = _settings(tmp_path, {"web": {**STOW, "profile": "legacy", "storage_commitment": True},
                             "down": {**DIMSE, "port": port, "profile": "legacy"}})
    archive = Archive.open(s)
    try:
        assert preflight.latest(archive, "web") is None
        r = preflight.ensure(archive, "web")
        assert r.outcome == "not checkable" and "no standard query" in r.detail
        assert "Explicit VR Little Endian" in r.detail  # the first syntax of the profile
        assert any("Storage Commitment is a DIMSE service" in w for w in r.warnings)
        again = preflight.ensure(archive, "web")  # in force: not asked again
        assert again.at == r.at and again.outcome == "not checkable"
        d = preflight.ensure(archive, "down")
        assert d.outcome == "unreachable" and "cannot connect" in d.detail
        d2 = preflight.ensure(archive, "down")  # unreachable: asked again before a send
        assert d2.at >= d.at and preflight.latest(archive, "down").outcome == "unreachable"
        from sqlalchemy import func, select

        from hounsfield.pacs.preflight_models import DestinationPreflight

        with archive.session() as ses:
            assert ses.scalar(select(func.count()).select_from(DestinationPreflight)) == 3
    finally:
        archive.close()


def test_preflight_fingerprint_follows_the_config(tmp_path):
    a = _settings(tmp_path, {"d": {**DIMSE, "profile": "legacy"}})
    b = _settings(tmp_path, {"d": {**DIMSE, "profile": "legacy",
                                   "transfer_syntaxes": [ImplicitVRLittleEndian]}})
    c = _settings(tmp_path, {"d": {**DIMSE, "profile": "legacy", "port": 105}})
    fps = {preflight.fingerprint(x, "d") for x in (a, b, c)}
    assert len(fps) == 3 and preflight.fingerprint(a, "d") == preflight.fingerprint(
        _settings(tmp_path, {"d": {**DIMSE, "profile": "legacy"}}), "d")
