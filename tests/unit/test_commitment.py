"""Storage Commitment without a network: the N-ACTION / N-EVENT-REPORT messages (built
strictly, read leniently, refused with a reason), the delivery-log semantics (an instance is
acknowledged by a commitment destination only when its latest COMMIT row is a success), the
results of a report (failed, not mentioned, unknown transaction) and of a timeout, and the SCP's
check against the archive."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.dicom import commitment as sc
from hounsfield.errors import InvalidInput
from hounsfield.ingest.commitment import check
from hounsfield.pacs import commitment
from hounsfield.pacs.export import acknowledged, committed, pending, stored
from hounsfield.pacs.models import CommitmentInstance, CommitmentRequest, Delivery
from tests.web_data import ct_series, to_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


# -- messages ----------------------------------------------------------------------------------
def test_action_information_round_trip():
    txn = generate_uid()
    refs = [sc.Ref(CT, generate_uid()), sc.Ref(SEG, generate_uid())]
    ds = sc.action_information(txn, refs)
    assert ds.TransactionUID == txn and len(ds.ReferencedSOPSequence) == 2
    assert "FailureReason" not in ds.ReferencedSOPSequence[0]
    assert sc.parse_action(ds) == (txn, refs)


@pytest.mark.parametrize("mutate, words", [
    (lambda ds: delattr(ds, "TransactionUID"), "no TransactionUID"),
    (lambda ds: setattr(ds, "TransactionUID", "1.2.abc"), "not a valid UID"),
    (lambda ds: setattr(ds, "ReferencedSOPSequence", Sequence([])), "empty or missing"),
    (lambda ds: delattr(ds, "ReferencedSOPSequence"), "empty or missing"),
    (lambda ds: delattr(ds.ReferencedSOPSequence[0], "ReferencedSOPInstanceUID"),
     "item 1 of ReferencedSOPSequence has no ReferencedSOPInstanceUID"),
    (lambda ds: ds.ReferencedSOPSequence.append(ds.ReferencedSOPSequence[0]), "twice"),
])
def test_bad_action_information_says_what_is_wrong(mutate, words):
    ds = sc.action_information(generate_uid(), [sc.Ref(CT, generate_uid())])
    mutate(ds)
    with pytest.raises(InvalidInput) as e:
        sc.parse_action(ds)
    assert words in e.value.reason


def test_no_action_information():
    with pytest.raises(InvalidInput, match="no Action Information"):
        sc.parse_action(None)


def test_lenient_uids_are_read():
    ds = sc.action_information("1.2.3", [sc.Ref(CT, "1.2.03.4")])  # a leading zero
    assert sc.parse_action(ds)[1][0].sop_instance_uid == "1.2.03.4"


def test_event_information_round_trip_and_event_types():
    ok = sc.Report(generate_uid(), [sc.Ref(CT, generate_uid())])
    assert ok.event_type == sc.EVENT_SUCCESS
    ds = sc.event_information(ok)
    assert "FailedSOPSequence" not in ds
    assert sc.parse_report(ds, 1) == ok
    mixed = sc.Report(generate_uid(), [sc.Ref(CT, generate_uid())],
                      [sc.Ref(CT, generate_uid(), sc.NO_SUCH_OBJECT),
                       sc.Ref(SEG, generate_uid(), sc.CLASS_INSTANCE_CONFLICT)])
    assert mixed.event_type == sc.EVENT_FAILURES
    ds = sc.event_information(mixed)
    assert [i.FailureReason for i in ds.FailedSOPSequence] == [0x0112, 0x0119]
    assert sc.parse_report(ds, 2) == mixed


def test_bad_reports():
    rep = sc.Report(generate_uid(), [sc.Ref(CT, generate_uid())])
    with pytest.raises(InvalidInput, match="Event Type ID 3"):
        sc.parse_report(sc.event_information(rep), 3)
    with pytest.raises(InvalidInput, match="without a Failed SOP Sequence"):
        sc.parse_report(sc.event_information(rep), 2)
    with pytest.raises(InvalidInput, match="no Event Information"):
        sc.parse_report(None, 1)
    # a failed item without a Failure Reason reads as a processing failure
    ds = Dataset()
    ds.TransactionUID = "1.2.3"
    it = Dataset()
    it.ReferencedSOPClassUID, it.ReferencedSOPInstanceUID = CT, "1.2.3.4"
    ds.FailedSOPSequence = Sequence([it])
    assert sc.parse_report(ds, 2).failed[0].reason == sc.PROCESSING_FAILURE


def test_reason_texts():
    assert sc.reason_text(0x0112) == "0x0112 no such object instance"
    assert sc.reason_text(0x0131) == "0x0131 duplicate transaction UID"
    assert sc.reason_text(sc.COMMIT_TIMEOUT) == "no report in time"
    assert "unknown" in sc.reason_text(0x0999)


# -- delivery log and results ------------------------------------------------------------------
@pytest.fixture
def archive(tmp_path: Path):
    settings = load_settings(
        data_dir=tmp_path / "var", profile="demo", fsync=False,
        export={"destinations": {
            "pacs": {"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                     "profile": "all", "storage_commitment": True,
                     "commitment_timeout_s": 30},
            "plain": {"kind": "dimse", "ae_title": "PLAIN", "host": "127.0.0.1", "port": 104,
                      "profile": "all"}}})
    a = Archive.open(settings)
    yield a
    a.close()


def _log(archive: Archive, dest: str, sop: str, op: str, status: int) -> None:
    with archive.write_session() as s, s.begin():
        s.add(Delivery(operation=op, destination=dest, sop_instance_uid=sop, status=status))


def test_acknowledged_needs_the_latest_commit_to_be_a_success(archive):
    a, b, c = (generate_uid() for _ in range(3))
    for sop in (a, b, c):
        _log(archive, "pacs", sop, "C-STORE", 0)
        _log(archive, "plain", sop, "C-STORE", 0)
    assert stored(archive, [a, b, c], "pacs") == {a, b, c}
    assert acknowledged(archive, [a, b, c], "pacs") == set()     # stored, not committed
    assert acknowledged(archive, [a, b, c], "plain") == {a, b, c}  # no commitment asked
    _log(archive, "pacs", a, "COMMIT", 0)
    _log(archive, "pacs", b, "COMMIT", 0x0112)
    _log(archive, "pacs", c, "COMMIT", sc.COMMIT_TIMEOUT)
    assert acknowledged(archive, [a, b, c], "pacs") == {a}
    assert pending(archive, [a, b, c], "pacs") == [b, c]
    # b re-sent and committed; a later reported lost: the latest COMMIT row decides
    _log(archive, "pacs", b, "C-STORE", 0)
    _log(archive, "pacs", b, "COMMIT", 0)
    _log(archive, "pacs", a, "COMMIT", 0x0110)
    assert committed(archive, [a, b, c], "pacs") == {b}
    assert pending(archive, [a, b, c], "pacs") == [a, c]
    # a commit success without a store acknowledgement is not enough
    d = generate_uid()
    _log(archive, "pacs", d, "COMMIT", 0)
    assert acknowledged(archive, [d], "pacs") == set()


def _request(archive: Archive, sops: list[str]) -> str:
    txn = generate_uid()
    with archive.write_session() as s, s.begin():
        s.add(CommitmentRequest(transaction_uid=txn, destination="pacs", remote_ae="PACS",
                                n_instances=len(sops), attempt=2))
        s.add_all([CommitmentInstance(transaction_uid=txn, sop_instance_uid=x,
                                      sop_class_uid=CT) for x in sops])
    return txn


def test_report_applies_per_instance_and_writes_commit_rows(archive):
    a, b, c = (generate_uid() for _ in range(3))
    txn = _request(archive, [a, b, c])
    assert commitment.status(archive, txn)["state"] == "pending"
    code, _ = commitment.record_report(archive, sc.Report(
        txn, [sc.Ref(CT, a)], [sc.Ref(CT, b, sc.NO_SUCH_OBJECT)]), calling_ae="PACS")
    assert code == 0
    st = commitment.status(archive, txn)
    assert st["state"] == "partial" and st["committed"] == 1 and st["final"]
    assert {f["sop_instance_uid"]: f["reason"] for f in st["failed"]} == {
        b: "0x0112 no such object instance", c: "not in the report"}
    with archive.session() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(
            select(Delivery).where(Delivery.operation == "COMMIT"))}
    assert rows[a].status == 0 and rows[b].status == 0x0112 and rows[c].status == 0x0110
    assert all(r.attempts == 2 and r.destination == "pacs" for r in rows.values())
    assert "not committed: 0x0112" in rows[b].detail


def test_report_for_an_unknown_transaction(archive):
    code, why = commitment.record_report(archive, sc.Report(generate_uid(),
                                                            [sc.Ref(CT, "1.2.3")]))
    assert code == 0x0110 and "unknown Transaction UID" in why


def test_timeout_then_a_late_report(archive):
    a, b = generate_uid(), generate_uid()
    txn = _request(archive, [a, b])
    st = commitment.expire(archive, txn)
    assert st["state"] == "timeout" and len(st["failed"]) == 2
    assert "within 30 s" in st["detail"]
    for sop in (a, b):
        _log(archive, "pacs", sop, "C-STORE", 0)
    assert acknowledged(archive, [a, b], "pacs") == set()
    # expiring twice changes nothing
    assert commitment.expire(archive, txn)["state"] == "timeout"
    # the PACS reports after all: recorded, and the instances count as committed
    commitment.record_report(archive, sc.Report(txn, [sc.Ref(CT, a), sc.Ref(CT, b)]))
    st = commitment.status(archive, txn)
    assert st["state"] == "committed" and "after the request had ended" in st["detail"]
    assert acknowledged(archive, [a, b], "pacs") == {a, b}


def test_scp_check_against_the_archive(archive):
    cts = ct_series(2, 16, seed="commit-check")
    store_instances(archive, [parse_part10(to_bytes(ds)) for ds in cts], source="test")
    have = str(cts[0].SOPInstanceUID)
    rep = check(archive, [sc.Ref(CT, have), sc.Ref(CT, "1.2.3.4"),
                          sc.Ref(SEG, str(cts[1].SOPInstanceUID))])
    assert [r.sop_instance_uid for r in rep.committed] == [have]
    assert [(r.sop_instance_uid, r.reason) for r in rep.failed] == [
        ("1.2.3.4", 0x0112), (str(cts[1].SOPInstanceUID), 0x0119)]


def test_request_refuses_a_stow_destination(tmp_path):
    settings = load_settings(data_dir=tmp_path / "v", profile="demo", fsync=False, export={
        "destinations": {"web": {"kind": "stowrs", "url": "http://127.0.0.1:1/dicom-web"}}})
    a = Archive.open(settings)
    try:
        with pytest.raises(InvalidInput, match="DIMSE service"):
            commitment.request(a, "web", [])
    finally:
        a.close()
