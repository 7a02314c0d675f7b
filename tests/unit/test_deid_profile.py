"""PS3.15 Annex E de-identification: the engine and the verifier over the whole real corpus
and over Hypothesis-generated data sets (PHI in random tags, nested sequences, private tags)."""

from __future__ import annotations

import io
import string
import warnings

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hounsfield.deid.engine import Deidentifier, deidentify_bytes, to_part10
from hounsfield.deid.profile import EDITION, DeidOptions, SafePrivate, table
from hounsfield.deid.verify import Reference, verify
from tests.helpers import corpus, corpus_files

warnings.filterwarnings("ignore", category=UserWarning)
KEY = b"test-key-0123456789abcdef"
ALL_OPTIONS = DeidOptions(retain_longitudinal_modified_dates=True, retain_patient_characteristics=True,
                          retain_device_identity=True, retain_institution_identity=True,
                          clean_descriptors=True, retain_safe_private=True)


def test_table_is_the_standard_with_edition():
    t = table()
    assert len(t) > 400 and "PS3.15" in EDITION
    assert t["00100010"].basic == "Z" and t["00100020"].basic == "Z"
    assert t["0020000D"].basic == "U" and t["00081030"].overrides == {"descriptors": "C"}
    assert t["00181000"].overrides == {"device": "K"}


def corpus_datasets():
    for p in corpus_files():
        try:
            ds = pydicom.dcmread(p, force=True)
        except Exception:  # noqa: BLE001 - junk in the corpus is not a data set
            continue
        if "SOPClassUID" in ds or "PatientID" in ds:
            yield p, ds


@pytest.mark.parametrize("options", [DeidOptions(), ALL_OPTIONS], ids=["basic", "all-options"])
def test_corpus_has_zero_leaks(options):
    engine = Deidentifier(KEY, options)
    n, leaks = 0, []
    for path, ds in corpus_datasets():
        ref = Reference.of(ds)
        engine.deidentify(ds)
        back = pydicom.dcmread(io.BytesIO(to_part10(ds)))
        leaks += [f"{path.name}: {leak}" for leak in verify(back, options, original=ref)]
        # the byte-level path (header rewritten, encoded pixel data copied) gives the same
        data, _res = deidentify_bytes(engine, path.read_bytes())
        fast = pydicom.dcmread(io.BytesIO(data), force=True)
        leaks += [f"{path.name} (bytes): {leak}" for leak in verify(fast, options, original=ref)]
        assert fast.get("SOPInstanceUID") == back.get("SOPInstanceUID")
        if "PixelData" in back and "PixelData" in fast:
            assert fast.PixelData == back.PixelData
        n += 1
    assert n > 150
    assert leaks == []


def test_uid_remapping_is_consistent_across_runs_and_references():
    a = pydicom.dcmread(corpus("CT_small.dcm"))
    sop, study = a.SOPInstanceUID, a.StudyInstanceUID
    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # a SEG referencing the CT
    ref.SOPInstanceUID = generate_uid()
    ref.StudyInstanceUID = study
    ref.PatientID = a.PatientID
    item, inner = Dataset(), Dataset()
    inner.ReferencedSOPClassUID = CTImageStorage
    inner.ReferencedSOPInstanceUID = sop
    item.SeriesInstanceUID = a.SeriesInstanceUID
    item.ReferencedInstanceSequence = [inner]
    ref.ReferencedSeriesSequence = [item]
    Deidentifier(KEY).deidentify(a)
    Deidentifier(KEY).deidentify(ref)  # another run, another engine, same key
    assert a.SOPInstanceUID != sop
    assert ref.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert ref.ReferencedSeriesSequence[0].SeriesInstanceUID == a.SeriesInstanceUID
    assert ref.StudyInstanceUID == a.StudyInstanceUID
    assert ref.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPClassUID == CTImageStorage
    other = pydicom.dcmread(corpus("CT_small.dcm"))
    Deidentifier(b"another key").deidentify(other)
    assert other.SOPInstanceUID != a.SOPInstanceUID


def test_modified_dates_shift_per_patient_and_keep_intervals():
    e = Deidentifier(KEY, DeidOptions(retain_longitudinal_modified_dates=True))
    one, two = pydicom.dcmread(corpus("CT_small.dcm")), pydicom.dcmread(corpus("CT_small.dcm"))
    two.StudyDate = "20040201"
    one.StudyDate = "20040119"
    e.deidentify(one)
    e.deidentify(two)
    from datetime import date
    d1 = date(int(one.StudyDate[:4]), int(one.StudyDate[4:6]), int(one.StudyDate[6:]))
    d2 = date(int(two.StudyDate[:4]), int(two.StudyDate[4:6]), int(two.StudyDate[6:]))
    assert (d2 - d1).days == 13 and one.StudyDate != "20040119"
    assert one.LongitudinalTemporalInformationModified == "MODIFIED"
    basic = pydicom.dcmread(corpus("CT_small.dcm"))
    Deidentifier(KEY).deidentify(basic)
    assert basic.StudyDate == "" and basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_options_keep_what_they_name_and_nothing_else():
    ds = pydicom.dcmread(corpus("CT_small.dcm"))
    ds.PatientAge = "054Y"
    ds.DeviceSerialNumber = "SN-12345"
    ds.InstitutionName = "St Elsewhere"
    ds.SeriesDescription = f"chest for {ds.PatientName.family_name} please"
    name = str(ds.PatientName.family_name)
    Deidentifier(KEY, ALL_OPTIONS).deidentify(ds)
    assert ds.PatientAge == "054Y" and ds.DeviceSerialNumber == "SN-12345"
    assert ds.InstitutionName == "St Elsewhere"
    assert ds.SeriesDescription.startswith("chest for") and name not in ds.SeriesDescription
    codes = {it.CodeValue for it in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113107", "113108", "113109", "113112", "113105", "113111"} <= codes
    basic = pydicom.dcmread(corpus("CT_small.dcm"))
    basic.PatientAge = "054Y"
    basic.SeriesDescription = "chest"
    Deidentifier(KEY).deidentify(basic)
    assert "PatientAge" not in basic and "SeriesDescription" not in basic


def test_private_removed_unless_safe_listed_and_unknown_public_removed():
    ds = pydicom.dcmread(corpus("CT_small.dcm"))
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x27, "SH", "1.375:1")
    ds.private_block(0x0043, "GEMS_PARM_01").add_new(0x28, "LO", "John Doe")
    ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "John Doe")
    ds.add_new(0x00431003, "LO", "orphan private without a creator")
    ds.add_new(0x0019FFFF, "LO", "x")
    ds.add_new(0x7777_0010, "LO", "unknown public attribute")  # not in the data dictionary
    e = Deidentifier(KEY, DeidOptions(retain_safe_private=True),
                     safe_private=[SafePrivate(creator="GEMS_PARM_01", group=0x0043, element=0x27)])
    e.deidentify(ds)
    kept = [el for el in ds if el.tag.is_private]
    assert [str(el.value) for el in kept if el.tag.element > 0xFF] == ["1.375:1"]
    assert 0x77770010 not in ds
    assert verify(ds, DeidOptions(retain_safe_private=True),
                  safe_private=[SafePrivate(creator="GEMS_PARM_01", group=0x0043, element=0x27)]) == []
    assert verify(ds, DeidOptions())  # without the option the same private element is a leak


def test_verifier_finds_what_was_left():
    ds = pydicom.dcmread(corpus("CT_small.dcm"))
    leaks = verify(ds)
    kws = {leak.keyword for leak in leaks}
    assert {"PatientIdentityRemoved", "StudyInstanceUID", "InstitutionName"} <= kws


# -- Hypothesis: PHI in random places ---------------------------------------------------------
TEXT_VRS = {"LO", "SH", "PN", "LT", "ST", "UT", "UC"}


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


TABLE_TEXT_TAGS = sorted(int(k, 16) for k, r in table().items()
                         if all(c in string.hexdigits for c in k) and int(k, 16) >> 16 not in (0, 2)
                         and int(k, 16) >> 16 < 0xFFFA and _vr(int(k, 16)) in TEXT_VRS)
OTHER_PN_TAGS = sorted(t for t in pydicom.datadict.DicomDictionary
                       if _vr(t) == "PN" and f"{t:08X}" not in table() and t >> 16 not in (0, 2)
                       and keyword_for_tag(t))
SEQUENCES = [0x00081140, 0x0040A730, 0x0040A073, 0x00081032, 0x00082218, 0x00400260]  # table + other

marker = st.text(alphabet=string.ascii_uppercase, min_size=6, max_size=10).map(lambda s: "PHI" + s)


@st.composite
def phi_items(draw, depth: int):
    ds = Dataset()
    for tag in draw(st.lists(st.sampled_from(TABLE_TEXT_TAGS), max_size=6, unique=True)):
        ds.add_new(tag, _vr(tag), draw(marker))
    for tag in draw(st.lists(st.sampled_from(OTHER_PN_TAGS), max_size=3, unique=True)):
        ds.add_new(tag, "PN", draw(marker))
    for _ in range(draw(st.integers(0, 3))):
        group = draw(st.sampled_from([0x0009, 0x0011, 0x0019, 0x0029, 0x0043, 0x2001]))
        creator = draw(st.sampled_from(["ACME 1.0", "GEMS_PARM_01", "SIEMENS CSA HEADER", "Philips Imaging DD 001"]))
        off = draw(st.integers(0, 0xFF))
        ds.private_block(group, creator, create=True).add_new(off, draw(st.sampled_from(["LO", "UN", "ST"])),
                                                               draw(marker).encode() if False else draw(marker))
    if draw(st.booleans()):
        ds.ReferencedSOPInstanceUID = draw(st.sampled_from(UIDS))
        ds.ReferencedSOPClassUID = CTImageStorage
    if depth > 0:
        for tag in draw(st.lists(st.sampled_from(SEQUENCES), max_size=2, unique=True)):
            ds.add_new(tag, "SQ", draw(st.lists(phi_items(depth - 1), min_size=1, max_size=2)))
    return ds


UIDS = [generate_uid(prefix="1.2.826.0.1.3680043.9.7777.") for _ in range(4)]


@st.composite
def phi_datasets(draw):
    ds = draw(phi_items(2))
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = draw(st.sampled_from(UIDS))
    ds.StudyInstanceUID = draw(st.sampled_from(UIDS))
    ds.PatientID = draw(marker)
    ds.PatientName = draw(marker) + "^" + draw(marker)
    ds.PatientBirthDate = "19610704"
    ds.StudyDate = draw(st.sampled_from(["20200101", "19991231", "20240229"]))
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phi_datasets(), st.sampled_from([DeidOptions(), DeidOptions(retain_longitudinal_modified_dates=True)]))
def test_generated_phi_never_leaks(ds, options):
    markers = {str(el.value) for el in ds.iterall() if isinstance(el.value, str) and "PHI" in str(el.value)}
    markers |= {p for m in list(markers) for p in m.split("^")}
    ref = Reference.of(ds)
    orig_uids = {str(v) for v in (ds.SOPInstanceUID, ds.StudyInstanceUID)}
    Deidentifier(KEY, options).deidentify(ds)
    data = to_part10(ds)
    back = pydicom.dcmread(io.BytesIO(data))
    assert verify(back, options, original=ref) == []
    for m in markers:
        where = [f"{el.tag} {el.keyword} {el.VR}" for el in back.iterall()
                 if m in str(el.value)]
        assert m.encode() not in data, (m, where)
    for u in orig_uids | set(UIDS):
        assert u.encode() not in data
    assert back.PatientIdentityRemoved == "YES"
