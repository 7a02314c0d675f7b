"""Unit tests for the DICOM node's pieces: statuses, destinations, identifiers, admission,
presentation contexts / transcoding, group commit + crash journal, stable detection."""

from __future__ import annotations

import time
from datetime import timedelta

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom.presentation import build_context
from sqlalchemy import func, select

from hounsfield.archive.check import check
from hounsfield.archive.models import Instance, utcnow
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.dicom import status as st
from hounsfield.dicom.transfer import fit_to_contexts, propose_for
from hounsfield.errors import (
    DatasetMismatch,
    InvalidDicom,
    InvalidInput,
    OutOfResources,
    PeerError,
)
from hounsfield.ingest import qr
from hounsfield.ingest.committer import GroupCommitter
from hounsfield.ingest.security import admit
from hounsfield.ingest.stable import detect, stable_state
from hounsfield.pacs.destinations import resolve
from hounsfield.pacs.pull import parse_query
from tests.dimse_peers import make_ct_series
from tests.helpers import corpus


@pytest.mark.parametrize("exc,code", [
    (DatasetMismatch("x"), 0xA900), (InvalidDicom("x"), 0xC000), (OutOfResources("x"), 0xA700),
    (RuntimeError("boom"), 0x0110),
])
def test_store_status(exc, code):
    got, comment = st.store_status(exc)
    assert got == code and 0 < len(comment) <= 64


def test_error_comment_is_lo():
    assert st.error_comment("a\\b\nc" + "x" * 100) == ("a b c" + "x" * 59)


def test_status_classes():
    assert st.is_warning(0xB000) and st.is_failure(0xA700) and not st.is_failure(0xFF00)


def test_resolve_destinations(settings):
    s = load_settings(data_dir=settings.data_dir, profile="demo",
                      dicom={"remotes": {"pacs": {"ae_title": "PACS", "host": "10.0.0.1",
                                                  "port": 104}}})
    assert resolve(s, "pacs").ae_title == "PACS"
    n = resolve(s, "ORTHANC@127.0.0.1:4242")
    assert (n.ae_title, n.host, n.port) == ("ORTHANC", "127.0.0.1", 4242)
    for bad in ("nowhere", "AE@host", "AE@host:99999", "WAYTOOLONGAETITLE1@h:1"):
        with pytest.raises(InvalidInput):
            resolve(s, bad)


def test_parse_identifier():
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = "CT"
    ds.SeriesDescription = ""
    ds.KVP = "120"
    req = qr.parse_identifier(ds)
    assert req.level == "SERIES"
    assert req.filters == {"StudyInstanceUID": "1.2.3", "Modality": "CT"}
    assert "SeriesDescription" in req.requested and req.unknown_matching == ["KVP"]
    bad = Dataset()
    bad.QueryRetrieveLevel = "PATIENT"
    with pytest.raises(InvalidInput):
        qr.parse_identifier(bad, qr.STUDY_ROOT)
    bad.QueryRetrieveLevel = "WHATEVER"
    with pytest.raises(InvalidInput):
        qr.parse_identifier(bad, qr.PATIENT_ROOT)


def test_parse_query():
    assert parse_query(["PatientID=1", "StudyDate=2020-"]) == {"PatientID": "1",
                                                               "StudyDate": "2020-"}
    for bad in (["PatientID"], ["NotAKeyword=1"], []):
        with pytest.raises(InvalidInput):
            parse_query(bad)


def test_admit(tmp_path):
    demo = load_settings(data_dir=tmp_path, profile="demo")
    assert admit(demo, "ANY", "HOUNSFIELD", "10.1.1.1")[0]
    assert not admit(demo, "ANY", "OTHER", "10.1.1.1")[0]
    prod = load_settings(data_dir=tmp_path, profile="production", secret_key="s" * 32,
                         dicom={"allowed_peers": {"CT1": "10.0.0.0/24", "WS": "*"}})
    assert admit(prod, "CT1", "HOUNSFIELD", "10.0.0.7")[0]
    assert not admit(prod, "CT1", "HOUNSFIELD", "10.0.1.7")[0]
    assert admit(prod, "WS", "HOUNSFIELD", "192.168.1.1")[0]
    ok, why = admit(prod, "EVIL", "HOUNSFIELD", "10.0.0.7")
    assert not ok and "allow-list" in why
    closed = load_settings(data_dir=tmp_path, profile="production", secret_key="s" * 32)
    assert not admit(closed, "CT1", "HOUNSFIELD", "127.0.0.1")[0]


def test_propose_and_fit():
    cxs = propose_for([("1.2.840.10008.5.1.4.1.1.4", JPEG2000Lossless),
                       ("1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian)])
    assert [c.transfer_syntax for c in cxs] == [[JPEG2000Lossless],
                                                [ExplicitVRLittleEndian, ImplicitVRLittleEndian]]
    ds = pydicom.dcmread(corpus("MR_small_RLE.dcm"))
    sop = str(ds.SOPClassUID)

    def accepted(*syntaxes):
        out = []
        for i, ts in enumerate(syntaxes):
            c = build_context(sop, [ts])
            c.context_id, c.result = 2 * i + 1, 0
            out.append(c)
        return out

    same, how = fit_to_contexts(ds, accepted(RLELossless))
    assert how == "" and same.file_meta.TransferSyntaxUID == RLELossless
    plain, how = fit_to_contexts(pydicom.dcmread(corpus("MR_small_RLE.dcm")),
                                 accepted(ImplicitVRLittleEndian))
    assert "transcoded" in how and plain.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert plain.pixel_array.shape == (64, 64)
    with pytest.raises(PeerError):
        fit_to_contexts(pydicom.dcmread(corpus("MR_small_RLE.dcm")), [])


def test_group_commit_batches_and_recovers(any_archive, tmp_path):
    archive = any_archive
    files = make_ct_series(tmp_path / "ct", 6, size=16)
    parsed = [parse_part10(f.read_bytes()) for f in files]
    gc = GroupCommitter(archive, max_batch=4)
    gc.start()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:  # six "associations" at once
        outcomes = list(pool.map(lambda p: gc.store(p, "TEST@127.0.0.1"), parsed))
    gc.stop()
    assert gc.checkpoints >= 1  # the relaxed commits were made durable (WAL / synchronous commit)
    assert [o.status for o in outcomes] == ["stored"] * 6
    assert gc.batches <= 6 and gc.instances == 6
    assert not list(gc.journal_dir.glob("*.keys"))  # the last checkpoint covered them all
    # a crash after blobs were written and before their commit: the journal names them.  A
    # complete blob (its hash matches its key) may have been acknowledged: indexed again.  A
    # partial one (cut short by the crash) was never acknowledged: removed.
    from hounsfield.archive.blobstore import blob_key

    whole, cut = (parse_part10(make_ct_series(tmp_path / f"x{i}", 1, size=16, seed=40 + i,
                                              patient_id=f"X{i}")[0].read_bytes())
                  for i in range(2))
    keys = [blob_key(p.study_instance_uid, p.sop_instance_uid, p.sha256) for p in (whole, cut)]
    archive.blobs.put(keys[0], whole.data)
    archive.blobs.put(keys[1], cut.data[:-100])
    gc.journal_dir.mkdir(parents=True, exist_ok=True)
    (gc.journal_dir / "00000001.keys").write_text("\n".join(keys) + "\n" + outcomes[0].sop_instance_uid)
    assert not check(archive).clean
    assert GroupCommitter(archive).recover() == {"reindexed": [keys[0]], "removed": [keys[1]]}
    assert check(archive).clean and not list(gc.journal_dir.iterdir())
    with archive.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 7
    # a row committed while its blob's fsync was cut short (power loss): never acknowledged,
    # so the row goes too
    torn = outcomes[1]
    with archive.session() as s:
        torn_key = s.scalar(select(Instance.blob_key).where(
            Instance.sop_instance_uid == torn.sop_instance_uid))
    path = archive.blobs.path(torn_key)
    path.write_bytes(path.read_bytes()[:-10])
    (gc.journal_dir / "00000002.keys").write_text(torn_key + "\n")
    assert GroupCommitter(archive).recover() == {"reindexed": [], "removed": [torn_key]}
    assert check(archive).clean
    with archive.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 6


def test_committer_not_running_refuses(archive, tmp_path):
    p = parse_part10(make_ct_series(tmp_path / "ct", 1, size=16)[0].read_bytes())
    with pytest.raises(OutOfResources):
        GroupCommitter(archive).store(p, "x")


def test_stable_detection(any_archive, tmp_path):
    archive = any_archive
    files = make_ct_series(tmp_path / "ct", 3, size=16)
    store_instances(archive, [parse_part10(f.read_bytes()) for f in files], source="t")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert detect(archive, quiet_s=60) == []
    assert stable_state(archive, [study])[study] is None
    # a monitor's later pass looks only at what received something after its window start
    assert detect(archive, quiet_s=0.0, now=utcnow() + timedelta(seconds=1),
                  since=utcnow()) == []
    events = detect(archive, quiet_s=0.0, now=utcnow() + timedelta(seconds=1),
                    since=utcnow() - timedelta(seconds=60))
    assert sorted((e.level, e.instances) for e in events) == [("SERIES", 3), ("STUDY", 3)]
    assert stable_state(archive, [study])[study] is not None
    assert detect(archive, quiet_s=0.0, now=utcnow() + timedelta(seconds=1)) == []
    time.sleep(0.01)
    late = make_ct_series(tmp_path / "late", 1, size=16, study_uid=study)
    store_instances(archive, [parse_part10(late[0].read_bytes())], source="t")
    assert stable_state(archive, [study])[study] is None
    again = detect(archive, quiet_s=0.0, now=utcnow() + timedelta(seconds=1))
    assert ("STUDY", 4) in {(e.level, e.instances) for e in again}


def test_wildcard_matching_is_case_sensitive_except_pn(any_archive, tmp_path):
    """PS3.4 C.2.2.2.4: wildcard matching is case-sensitive (PN: as configured), on SQLite and
    PostgreSQL alike."""
    files = make_ct_series(tmp_path / "ct", 1, size=16, patient_id="PG7")
    store_instances(any_archive, [parse_part10(files[0].read_bytes())], source="t")
    with any_archive.session() as s:
        def n(**keys):
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            for k, v in keys.items():
                setattr(q, k, v)
            return len(list(qr.find(s, qr.parse_identifier(q), ae_title="X")))

        assert n(PatientID="PG*") == 1 and n(PatientID="pg*") == 0
        assert n(PatientName="bench^*") == 1 and n(PatientName="BENCH^PG?") == 1
