"""Archive suite (runs on SQLite and PostgreSQL): store, dedup, conflicts, charsets, queries."""

from __future__ import annotations

import io
from datetime import date as date_cls, datetime

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from hounsfield.archive.models import Instance
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.query import find_studies, instances_of, study_counts
from hounsfield.archive.store import store_instance, store_instances
from tests.helpers import corpus


def make_ds(**kw) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = kw.pop("sop", generate_uid())
    ds.StudyInstanceUID = kw.pop("study", generate_uid())
    ds.SeriesInstanceUID = kw.pop("series", generate_uid())
    ds.Modality = "CT"
    ds.PatientID = "P1"
    ds.PatientName = "Doe^Jane"
    for k, v in kw.items():
        setattr(ds, k, v)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_store_then_duplicate_then_conflict(any_archive):
    ds = make_ds(StudyDescription="first")
    first = parse_part10(to_bytes(ds))
    assert store_instance(any_archive, first, source="t").status == "stored"
    assert store_instance(any_archive, parse_part10(to_bytes(ds)), source="t").status == "duplicate"
    ds.StudyDescription = "changed"
    out = store_instance(any_archive, parse_part10(to_bytes(ds)), source="t")
    assert out.status == "conflict"
    with any_archive.session() as s:
        rows = instances_of(s, ds.SOPInstanceUID)
        assert len(rows) == 1 and rows[0].sha256 == first.sha256
        assert any_archive.blobs.read(rows[0].blob_key) == first.data


def test_same_data_set_under_another_file_meta_is_a_duplicate(any_archive):
    """A file imported from disk and later re-sent over C-STORE (the receiver writes its own
    file meta) is the same object: a duplicate, first kept, no second blob — also when the
    blob was written before the decision (the C-STORE path)."""
    from hounsfield.archive.blobstore import blob_key
    from hounsfield.archive.store import same_object

    ds = make_ds(StudyDescription="first")
    first = parse_part10(to_bytes(ds))
    assert not same_object(first.data, b"no dicom") and not same_object(b"\0" * 140, first.data)
    implicit = make_ds(sop=ds.SOPInstanceUID, study=ds.StudyInstanceUID,
                       series=ds.SeriesInstanceUID, StudyDescription="first")
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # same elements, other syntax
    assert same_object(first.data, to_bytes(make_ds(
        sop=ds.SOPInstanceUID, study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID,
        StudyDescription="first")))
    assert not same_object(first.data, to_bytes(implicit))
    assert store_instance(any_archive, first, source="import").status == "stored"
    blobs_before = set(any_archive.blobs.keys())
    ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY"
    again = parse_part10(to_bytes(ds))
    assert again.sha256 != first.sha256
    out = store_instance(any_archive, again, source="MODALITY")
    assert out.status == "duplicate" and "file meta" in out.reason
    # the blob written first by the receiver is removed again
    resent = parse_part10(to_bytes(ds))
    key = blob_key(resent.study_instance_uid, resent.sop_instance_uid, resent.sha256)
    any_archive.blobs.put(key, resent.data)
    resent.data = None
    assert store_instance(any_archive, resent, source="MODALITY").status == "duplicate"
    assert set(any_archive.blobs.keys()) == blobs_before
    with any_archive.session() as s:
        rows = instances_of(s, ds.SOPInstanceUID)
        assert len(rows) == 1 and any_archive.blobs.read(rows[0].blob_key) == first.data
    # re-encoded by the sender: trailing padding dropped, a sequence's length undefined
    seq = make_ds(sop=ds.SOPInstanceUID, study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID)
    seq.ReferencedImageSequence = [Dataset()]
    seq.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    seq.add_new(0xFFFCFFFC, "OB", b"\0" * 16)
    uid2 = generate_uid()
    seq.SOPInstanceUID = seq.file_meta.MediaStorageSOPInstanceUID = uid2
    assert store_instance(any_archive, parse_part10(to_bytes(seq)), source="import").status == "stored"
    del seq[0xFFFCFFFC]
    seq["ReferencedImageSequence"].is_undefined_length = True
    seq.file_meta.ImplementationVersionName = "OTHER_SENDER"
    out = store_instance(any_archive, parse_part10(to_bytes(seq)), source="MODALITY")
    assert out.status == "duplicate", out.reason
    seq.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.4"  # a different object
    assert store_instance(any_archive, parse_part10(to_bytes(seq)), source="M").status == "conflict"
    # a different data set under the same UID stays a conflict
    ds.StudyDescription = "changed"
    assert store_instance(any_archive, parse_part10(to_bytes(ds)), source="t").status == "conflict"


def test_replace_policy(any_archive):
    ds = make_ds(StudyDescription="first")
    store_instance(any_archive, parse_part10(to_bytes(ds)), source="t")
    ds.StudyDescription = "second"
    second = parse_part10(to_bytes(ds))
    out = store_instance(any_archive, second, source="t", policy="replace")
    assert out.status == "replaced"
    with any_archive.session() as s:
        (row,) = instances_of(s, ds.SOPInstanceUID)
        assert any_archive.blobs.read(row.blob_key) == second.data
    assert len(list(any_archive.blobs.keys())) == 1


@pytest.mark.parametrize("fname", [
    "chrX1.dcm",  # ISO_IR 192 (UTF-8)
    "chrX2.dcm",  # GB18030
    "chrFren.dcm",  # Latin-1
    "chrH31.dcm",  # Japanese ISO 2022 IR 87
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrArab.dcm",
    "chrGreek.dcm",
])
def test_specific_character_sets_decoded(any_archive, fname):
    path = corpus(fname)
    p = parse_part10(path.read_bytes())
    store_instance(any_archive, p, source="t")
    want = str(pydicom.dcmread(path).PatientName)
    with any_archive.session() as s:
        (study,) = find_studies(s, {"StudyInstanceUID": p.study_instance_uid})
        assert study.patient.patient_name == want
        assert any(ord(c) > 127 for c in want)


def test_chinese_names_in_gb18030_and_utf8(any_archive):
    for charset in ("GB18030", "ISO_IR 192", "GBK"):
        ds = make_ds(SpecificCharacterSet=charset, PatientName="王^小明", PatientID=charset)
        store_instance(any_archive, parse_part10(to_bytes(ds)), source="t")
    with any_archive.session() as s:
        for charset in ("GB18030", "ISO_IR 192", "GBK"):
            (st_,) = find_studies(s, {"PatientID": charset})
            assert st_.patient.patient_name == "王^小明"
        assert len(find_studies(s, {"PatientName": "王*"})) == 3


def test_query_matching(any_archive):
    study = generate_uid()
    for i, (mod, date) in enumerate([("CT", "20240101"), ("SEG", "20240101")]):
        ds = make_ds(study=study, Modality=mod, StudyDate=date, PatientName="Smith^John",
                     AccessionNumber="ACC1", InstanceNumber=i + 1)
        store_instance(any_archive, parse_part10(to_bytes(ds)), source="t")
    store_instance(any_archive, parse_part10(to_bytes(make_ds(StudyDate="20230505",
                   PatientName="Jones^Ann", PatientID="P2"))), source="t")
    with any_archive.session() as s:
        assert [x.study_instance_uid for x in find_studies(s, {"PatientName": "smi*"})] == [study]
        assert len(find_studies(s, {"PatientName": "SMITH"})) == 1
        assert len(find_studies(s, {"StudyDate": "20240101-"})) == 1
        assert len(find_studies(s, {"StudyDate": "-20231231"})) == 1
        assert len(find_studies(s, {"StudyDate": "20230101-20241231"})) == 2
        assert len(find_studies(s, {"ModalitiesInStudy": "SEG"})) == 1
        assert len(find_studies(s, {"PatientName": "J?nes^Ann"})) == 1
        assert len(find_studies(s, {"PatientName": "%"})) == 0  # SQL wildcard is a literal
        assert len(find_studies(s, {"AccessionNumber": "' OR 1=1 --"})) == 0
        (st_,) = find_studies(s, {"StudyInstanceUID": f"{study}\\1.2.3"})
        c = study_counts(s, [st_.id])[st_.id]
        assert c.modalities == ["CT", "SEG"] and c.series == 2 and c.instances == 2


text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\^="),
               min_size=0, max_size=60).map(str.strip)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(desc=text, name=text, accession=st.text(alphabet="ABC123-_ ", max_size=16).map(str.strip),
       date=st.dates(min_value=date_cls(1900, 1, 1)).map(lambda d: d.strftime("%Y%m%d")))
def test_roundtrip_attribute_values(any_archive, desc, name, accession, date):
    ds = make_ds(SpecificCharacterSet="ISO_IR 192", StudyDescription=desc[:64],
                 PatientID=generate_uid()[-20:],
                 PatientName=name[:64], AccessionNumber=accession, StudyDate=date)
    p = parse_part10(to_bytes(ds))
    store_instance(any_archive, p, source="t")
    with any_archive.session() as s:
        (study,) = find_studies(s, {"StudyInstanceUID": p.study_instance_uid})
        assert study.study_description == desc[:64].strip()
        assert study.patient.patient_name == name[:64].strip()
        assert study.accession_number == accession
        assert study.study_date == date
        inst = s.query(Instance).filter_by(sop_instance_uid=p.sop_instance_uid).one()
        assert inst.metadata_json["0020000D"]["Value"] == [p.study_instance_uid]


def test_batch_with_same_uid_twice(any_archive):
    ds = make_ds()
    a = parse_part10(to_bytes(ds))
    ds.StudyDescription = "other"
    b = parse_part10(to_bytes(ds))
    outs = store_instances(any_archive, [a, a, b], source="t")
    assert [o.status for o in outs] == ["stored", "duplicate", "conflict"]


def test_hot_path_rows_equal_the_general_paths(archive, tmp_path):
    """Instances of an indexed series, their blobs written first (the C-STORE committer's
    case), are committed on the DB-API cursor; their rows read back exactly as rows written
    through SQLAlchemy Core, and every other case still goes the general way."""
    from hounsfield.archive import Archive
    from hounsfield.archive.blobstore import blob_key
    from hounsfield.archive.hotindex import hot_index
    from hounsfield.archive.models import Series
    from hounsfield.config import load_settings
    from tests.dimse_peers import make_ct_series

    def prewritten(a, f):
        p = parse_part10(f.read_bytes())
        a.blobs.put(blob_key(p.study_instance_uid, p.sop_instance_uid, p.sha256), p.data)
        p.data = None
        return p

    files = make_ct_series(tmp_path / "ct", 3, size=16)
    hot = hot_index(archive.write_engine)
    assert hot is not None
    # the series' first instance creates its rows (general path), the next two take the hot one
    assert store_instance(archive, prewritten(archive, files[0]), source="A").status == "stored"
    outs = store_instances(archive, [prewritten(archive, f) for f in files[1:]], source="A")
    assert [o.status for o in outs] == ["stored", "stored"] and hot.commits == 1
    # the same bytes again: a duplicate, decided by the general path
    assert store_instance(archive, prewritten(archive, files[1]), source="A").status == "duplicate"
    assert hot.commits == 1
    other = Archive.open(load_settings(data_dir=tmp_path / "core", profile="demo"))
    try:
        for f in files:  # the import path: decided and written through Core
            assert store_instance(other, parse_part10(f.read_bytes()), source="A").status == "stored"

        def rows(a):
            with a.session() as s:
                out = {}
                for r in s.scalars(select(Instance)):
                    d = {c.name: getattr(r, c.key) for c in Instance.__table__.columns}
                    assert isinstance(d.pop("received_at"), datetime)
                    for k in ("id", "series_pk"):
                        d.pop(k)
                    out[r.sop_instance_uid] = d
                series = s.scalars(select(Series)).one()
                newest = max(r.received_at for r in s.scalars(select(Instance)))
                assert series.last_received_at == newest and series.study.last_received_at == newest
                return out

        assert rows(archive) == rows(other)
    finally:
        other.close()
