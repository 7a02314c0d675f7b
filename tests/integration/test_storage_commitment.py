"""Storage Commitment (PS3.4 Annex J) with Orthanc as the real peer.

SCU: Hounsfield exports SEG + SR to Orthanc, asks it to commit them, Orthanc reports on a new
association to our DICOM node; an instance deleted from Orthanc between store and commit is
reported as failed (0x0112), is no longer acknowledged, is re-sent on the next attempt and then
committed.  SCP: Orthanc asks Hounsfield (``POST /modalities/{id}/storage-commitment``) about
instances we hold, one we never received and one with the wrong SOP class; Orthanc's own report
(``/storage-commitment/{id}``) shows the right lists.  Bad N-ACTIONs from pynetdicom (a client
that is not ours) get failure statuses and the node keeps serving.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.dicom import commitment as sc
from hounsfield.ingest.scp import DicomNode
from hounsfield.pacs import commitment
from hounsfield.pacs.export import acknowledged, deliver, pending, stored
from hounsfield.pacs.models import CommitmentInstance, Delivery
from tests.dimse_peers import Orthanc, have, wait_until
from tests.helpers import free_port
from tests.web_data import ct_series, seg_of, sr_of, to_bytes

pytestmark = [pytest.mark.peers,
              pytest.mark.skipif(not have("Orthanc"), reason="Orthanc not installed")]

CT = "1.2.840.10008.5.1.4.1.1.2"


def make(tmp_path: Path, *, destinations: dict | None = None, remotes: dict | None = None,
         port: int | None = None) -> tuple[Archive, dict[str, str], DicomNode]:
    """An archive with a CT series (4 slices) and its SEG and SR, and our DICOM node on it."""
    settings = load_settings(
        data_dir=tmp_path / "var", profile="demo", fsync=False,
        dicom={"port": port or free_port(), "acse_timeout_s": 5, "dimse_timeout_s": 20,
               "network_timeout_s": 20, "remotes": remotes or {}},
        export={"destinations": destinations or {}})
    archive = Archive.open(settings)
    cts = ct_series(4, 32, seed=f"commit-{tmp_path.name}")
    objs = {**{f"CT{i}": ds for i, ds in enumerate(cts)}, "SEG": seg_of(cts), "SR": sr_of(cts)}
    out = store_instances(archive, [parse_part10(to_bytes(ds), name=k)
                                    for k, ds in objs.items()], source="test")
    assert all(o.status == "stored" for o in out), out
    node = DicomNode(archive, commitment_reports=commitment.record_report)
    node.start()
    return archive, {k: str(ds.SOPInstanceUID) for k, ds in objs.items()}, node


def orthanc_for(tmp_path: Path, node_port: int) -> Orthanc:
    return Orthanc(tmp_path / "orthanc",
                   modalities={"hounsfield": ("HOUNSFIELD", "127.0.0.1", node_port)}).start()


def dest(o: Orthanc, **kw) -> dict:
    return {"kind": "dimse", "ae_title": o.aet, "host": "127.0.0.1", "port": o.dicom_port,
            "profile": "ai-ready", "storage_commitment": True, "commitment_hold_s": 0.5, **kw}


def orthanc_delete(o: Orthanc, sop: str) -> None:
    ids = o.rest("/tools/lookup", sop.encode())
    req = urllib.request.Request(f"http://127.0.0.1:{o.http_port}{ids[0]['Path']}",
                                 method="DELETE")
    urllib.request.urlopen(req, timeout=30).read()


def wait_final(archive: Archive, txn: str, timeout: float = 30) -> dict:
    assert wait_until(lambda: commitment.status(archive, txn)["final"], timeout), \
        commitment.status(archive, txn)
    return commitment.status(archive, txn)


@pytest.fixture
def peers(tmp_path):
    started = []

    def start(**kw):  # noqa: ANN003, ANN202
        port = free_port()
        o = orthanc_for(tmp_path, port)
        archive, uid, node = make(tmp_path, destinations={"pacs": dest(o, **kw)}, port=port)
        started.append((o, archive, node))
        return o, archive, uid, node

    yield start
    for o, archive, node in started:
        node.stop()
        archive.close()
        o.stop()


def test_export_counts_only_once_orthanc_commits(peers):
    orthanc, archive, uid, _node = peers()
    results = [uid["SEG"], uid["SR"]]
    report = deliver(archive, list(uid.values()), "pacs")
    assert report.ok and report.sent == 2
    # stored, but not acknowledged yet: the profile asks for commitment
    assert stored(archive, results, "pacs") == set(results)
    assert acknowledged(archive, results, "pacs") == set()
    req = commitment.request(archive, "pacs", list(uid.values()), job_id="job-a")
    assert req.outcome == "sent" and req.instances == 2, req
    st = wait_final(archive, req.transaction_uid)
    assert st["state"] == "committed" and st["committed"] == 2 and not st["failed"], st
    assert acknowledged(archive, results, "pacs") == set(results)
    assert pending(archive, results, "pacs") == []
    with archive.session() as s:
        rows = s.scalars(select(Delivery).where(Delivery.operation == "COMMIT")).all()
        assert sorted(r.sop_instance_uid for r in rows) == sorted(results)
        assert all(r.status == 0 and r.destination == "pacs" for r in rows)
        from hounsfield.pacs.models import CommitmentRequest

        cr = s.scalars(select(CommitmentRequest)).one()
        assert cr.report_via == "new" and cr.remote_ae == "ORTHANC" and cr.job_id == "job-a"
    # nothing left to commit: a second request says so and sends nothing
    again = commitment.request(archive, "pacs", results)
    assert again.outcome == "done" and again.already == 2


def test_instance_lost_before_commit_is_resent_then_committed(peers):
    orthanc, archive, uid, _node = peers()
    results = [uid["SEG"], uid["SR"]]
    assert deliver(archive, results, "pacs").sent == 2
    orthanc_delete(orthanc, uid["SR"])  # the PACS loses one between store and commit
    req = commitment.request(archive, "pacs", results)
    st = wait_final(archive, req.transaction_uid)
    assert st["state"] == "partial" and st["committed"] == 1, st
    assert st["failed"] == [{"sop_instance_uid": uid["SR"],
                             "reason": "0x0112 no such object instance"}]
    with archive.session() as s:
        inst = s.scalars(select(CommitmentInstance).where(
            CommitmentInstance.sop_instance_uid == uid["SR"])).one()
        assert inst.state == "failed" and inst.failure_reason == 0x0112
    assert acknowledged(archive, results, "pacs") == {uid["SEG"]}
    assert pending(archive, results, "pacs") == [uid["SR"]]
    # attempt 2: only the SR is sent again, and only it is asked about
    second = deliver(archive, results, "pacs", attempt=2)
    assert [i.sop_instance_uid for i in second.items] == [uid["SR"]] and second.ok
    assert second.skipped == [uid["SEG"]]
    req2 = commitment.request(archive, "pacs", results, attempt=2)
    assert req2.instances == 1 and req2.already == 1
    st2 = wait_final(archive, req2.transaction_uid)
    assert st2["state"] == "committed", st2
    assert acknowledged(archive, results, "pacs") == set(results)


def test_no_report_in_time_is_not_committed(tmp_path):
    """Orthanc accepts the request but cannot reach us to report (it knows our AE title at a
    port where nothing listens): after the timeout the instances are not acknowledged and
    carry a COMMIT row with status -5."""
    o = orthanc_for(tmp_path, free_port())
    archive, uid, node = make(tmp_path, destinations={"pacs": dest(o,
                                                                  commitment_timeout_s=1)})
    try:
        results = [uid["SEG"], uid["SR"]]
        assert deliver(archive, results, "pacs").sent == 2
        req = commitment.request(archive, "pacs", results)
        assert req.outcome == "sent" and req.state == "pending", req
        st = commitment.expire(archive, req.transaction_uid)
        assert st["state"] == "timeout" and len(st["failed"]) == 2, st
        assert st["failed"][0]["reason"] == "no report in time"
        assert acknowledged(archive, results, "pacs") == set()
        assert pending(archive, results, "pacs") == results
        with archive.session() as s:
            rows = s.scalars(select(Delivery).where(Delivery.operation == "COMMIT")).all()
            assert sorted(r.status for r in rows) == [sc.COMMIT_TIMEOUT] * 2
    finally:
        node.stop()
        archive.close()
        o.stop()


def test_orthanc_refuses_a_request_from_an_unknown_modality(tmp_path):
    """Orthanc aborts the N-ACTION of an AE it does not know: a transient failure of the
    attempt (retried), the request recorded as refused."""
    o = Orthanc(tmp_path / "orthanc").start()
    archive, uid, node = make(tmp_path, destinations={"pacs": dest(o)})
    try:
        results = [uid["SEG"], uid["SR"]]
        assert deliver(archive, results, "pacs").sent == 2
        req = commitment.request(archive, "pacs", results)
        assert req.outcome == "retry" and req.state == "refused", req
        assert commitment.status(archive, req.transaction_uid)["state"] == "refused"
        assert acknowledged(archive, results, "pacs") == set()
    finally:
        node.stop()
        archive.close()
        o.stop()


# -- SCP: Orthanc asks us ---------------------------------------------------------------------
def test_orthanc_asks_hounsfield_for_commitment(tmp_path):
    o_port = free_port()
    o = None
    archive, uid, node = make(tmp_path, remotes={"orthanc": {
        "ae_title": "ORTHANC", "host": "127.0.0.1", "port": o_port}})
    try:
        o = Orthanc(tmp_path / "orthanc",
                    modalities={"hounsfield": ("HOUNSFIELD", "127.0.0.1", node.port)})
        o.dicom_port = o_port
        o.start()
        missing = generate_uid()
        ask = [{"SOPClassUID": CT, "SOPInstanceUID": uid["CT0"]},
               {"SOPClassUID": CT, "SOPInstanceUID": uid["CT1"]},
               {"SOPClassUID": CT, "SOPInstanceUID": missing},
               {"SOPClassUID": CT, "SOPInstanceUID": uid["SEG"]}]  # held, but it is a SEG
        r = o.rest("/modalities/hounsfield/storage-commitment", {"DicomInstances": ask})
        path = r["Path"]
        assert wait_until(lambda: o.rest(path)["Status"] != "Pending", 30), o.rest(path)
        rep = o.rest(path)
        assert rep["Status"] == "Failure", rep
        assert sorted(x["SOPInstanceUID"] for x in rep["Success"]) == sorted(
            [uid["CT0"], uid["CT1"]])
        failures = {x["SOPInstanceUID"]: x["FailureReason"] for x in rep["Failures"]}
        assert failures == {missing: 0x0112, uid["SEG"]: 0x0119}, rep
        # all held: Success
        r2 = o.rest("/modalities/hounsfield/storage-commitment",
                    {"DicomInstances": ask[:2]})
        assert wait_until(lambda: o.rest(r2["Path"])["Status"] != "Pending", 30)
        assert o.rest(r2["Path"])["Status"] == "Success"
        from hounsfield.audit import query as audit_query
        from hounsfield.ingest.commitment_models import CommitmentInbound

        def inbound() -> list:  # settled just after Orthanc's answer, in the report thread
            with archive.session() as s:
                return [(r.state, r.via, r.n_committed, r.n_failed) for r in s.scalars(
                    select(CommitmentInbound).order_by(CommitmentInbound.id))]

        want = [("reported", "new", 2, 2), ("reported", "new", 2, 0)]
        assert wait_until(lambda: inbound() == want, 10), inbound()
        with archive.session() as s:
            events = [e for e in audit_query(s, limit=50) if e.action == "STORAGE-COMMITMENT"]
            assert any("N-EVENT-REPORT" in e.detail and "2 failed" in e.detail for e in events)
    finally:
        node.stop()
        archive.close()
        if o is not None:
            o.stop()


# -- bad N-ACTIONs from a client that is not ours ----------------------------------------------
def _n_action(port: int, info: Dataset | None, *, calling: str = "ORTHANC",
              instance: str = sc.WELL_KNOWN_INSTANCE, action: int = 1,
              hold: float = 0.0) -> tuple[int, str, list]:
    reports: list = []

    def on_report(event):  # noqa: ANN001, ANN202
        reports.append(event.event_information)
        return 0x0000, None

    ae = AE(ae_title=calling)
    ae.add_requested_context(sc.PUSH_MODEL)
    assoc = ae.associate("127.0.0.1", port, ae_title="HOUNSFIELD",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        rsp, _ = assoc.send_n_action(info, action, sc.PUSH_MODEL, instance)
        if hold:
            wait_until(lambda: bool(reports), hold)
    finally:
        assoc.release()
    return int(rsp.Status), str(rsp.get("ErrorComment", "")), reports


def test_bad_n_actions_are_refused_and_the_node_keeps_serving(tmp_path):
    archive, uid, node = make(tmp_path, remotes={"peer": {
        "ae_title": "ORTHANC", "host": "127.0.0.1", "port": free_port()}})
    try:
        no_txn = Dataset()
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT, uid["CT0"]
        no_txn.ReferencedSOPSequence = Sequence([ref])
        code, why, _ = _n_action(node.port, no_txn)
        assert code == 0x0115 and "TransactionUID" in why
        empty = Dataset()
        empty.TransactionUID = generate_uid()
        empty.ReferencedSOPSequence = Sequence([])
        code, why, _ = _n_action(node.port, empty)
        assert code == 0x0115 and "empty" in why
        good = sc.action_information(generate_uid(), [sc.Ref(CT, uid["CT0"])])
        code, why, _ = _n_action(node.port, good, action=7)
        assert code == 0x0123
        code, why, _ = _n_action(node.port, good, instance="1.2.3")
        assert code == 0x0117
        code, why, _ = _n_action(node.port, good, calling="STRANGER")
        assert code == 0x0124 and "STRANGER" in why
        # a good one, with the association held open: the report comes on it
        txn = generate_uid()
        code, _why, reports = _n_action(node.port, sc.action_information(
            txn, [sc.Ref(CT, uid["CT0"]), sc.Ref(CT, generate_uid())]), hold=10)
        assert code == 0
        assert reports, "no N-EVENT-REPORT on the held association"
        rep = sc.parse_report(reports[0], sc.EVENT_FAILURES)
        assert rep.transaction_uid == txn
        assert [r.sop_instance_uid for r in rep.committed] == [uid["CT0"]]
        assert [r.reason for r in rep.failed] == [0x0112]
        # still serving: C-ECHO
        ae = AE(ae_title="ECHO")
        ae.add_requested_context("1.2.840.10008.1.1")
        a = ae.associate("127.0.0.1", node.port, ae_title="HOUNSFIELD")
        assert a.is_established and a.send_c_echo().Status == 0
        a.release()
    finally:
        node.stop()
        archive.close()


def test_report_for_unknown_transaction_is_refused(tmp_path):
    archive, _uid, node = make(tmp_path)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(sc.PUSH_MODEL)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="HOUNSFIELD",
                             ext_neg=[build_role(sc.PUSH_MODEL, scp_role=True)])
        assert assoc.is_established
        rep = sc.Report(generate_uid(), [sc.Ref(CT, generate_uid())])
        rsp, _ = assoc.send_n_event_report(sc.event_information(rep), 1, sc.PUSH_MODEL,
                                           sc.WELL_KNOWN_INSTANCE)
        assert rsp.Status == 0x0110 and "unknown Transaction UID" in rsp.ErrorComment
        no_txn = sc.event_information(rep)
        del no_txn.TransactionUID
        rsp, _ = assoc.send_n_event_report(no_txn, 1, sc.PUSH_MODEL, sc.WELL_KNOWN_INSTANCE)
        assert rsp.Status == 0x0115 and "TransactionUID" in rsp.ErrorComment
        rsp, _ = assoc.send_n_event_report(sc.event_information(rep), 9, sc.PUSH_MODEL,
                                           sc.WELL_KNOWN_INSTANCE)
        assert rsp.Status == 0x0113
        assoc.release()
    finally:
        node.stop()
        archive.close()


# -- SCU: a PACS that reports on the same association (pynetdicom as the PACS) ----------------
def test_report_on_the_same_association(tmp_path):
    """A PACS (pynetdicom, not our code) that stores, then answers the N-ACTION and sends the
    N-EVENT-REPORT on the same association while we hold it open."""
    import threading

    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom.sop_class import SegmentationStorage

    held: set[str] = set()

    def on_store(event):  # noqa: ANN001, ANN202
        held.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def on_action(event):  # noqa: ANN001, ANN202
        txn, refs = sc.parse_action(event.action_information)
        rep = sc.Report(txn, [r for r in refs if r.sop_instance_uid in held],
                        [sc.Ref(r.sop_class_uid, r.sop_instance_uid, sc.NO_SUCH_OBJECT)
                         for r in refs if r.sop_instance_uid not in held])
        assoc = event.assoc

        def report():  # noqa: ANN202
            assoc.send_n_event_report(sc.event_information(rep), rep.event_type,
                                      sc.PUSH_MODEL, sc.WELL_KNOWN_INSTANCE)

        threading.Thread(target=report, daemon=True).start()
        return 0x0000, None

    pacs = AE(ae_title="PYPACS")
    pacs.add_supported_context(sc.PUSH_MODEL)
    plain = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    pacs.add_supported_context(SegmentationStorage, plain)
    pacs.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34", plain)  # Comprehensive 3D SR
    port = free_port()
    server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)])
    archive, uid, node = make(tmp_path, destinations={"pacs": {
        "kind": "dimse", "ae_title": "PYPACS", "host": "127.0.0.1", "port": port,
        "profile": "ai-ready", "storage_commitment": True, "commitment_hold_s": 10}})
    try:
        assert deliver(archive, [uid["SEG"], uid["SR"]], "pacs").sent == 2
        held.discard(uid["SR"])  # "lost" after the C-STORE response
        req = commitment.request(archive, "pacs", [uid["SEG"], uid["SR"]])
        assert req.outcome == "sent" and req.state == "partial", req
        st = commitment.status(archive, req.transaction_uid)
        assert st["committed"] == 1 and st["failed"][0]["sop_instance_uid"] == uid["SR"]
        with archive.session() as s:
            from hounsfield.pacs.models import CommitmentRequest

            assert s.scalars(select(CommitmentRequest)).one().report_via == "same"
        assert pending(archive, [uid["SEG"], uid["SR"]], "pacs") == [uid["SR"]]
    finally:
        server.shutdown()
        node.stop()
        archive.close()


def test_a_promised_report_is_sent_after_a_restart(tmp_path):
    """An N-ACTION answered before the node stopped: the report goes out when it starts."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from hounsfield.ingest.commitment_models import CommitmentInbound

    got: list = []

    def on_report(event):  # noqa: ANN001, ANN202
        got.append(sc.parse_report(event.event_information, event.request.EventTypeID))
        return 0x0000, None

    modality = AE(ae_title="MODALITY")
    modality.add_supported_context(sc.PUSH_MODEL, [ExplicitVRLittleEndian,
                                                   ImplicitVRLittleEndian],
                                   scu_role=True, scp_role=True)
    mport = free_port()
    server = modality.start_server(("127.0.0.1", mport), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    archive, uid, node = make(tmp_path, remotes={"ct": {
        "ae_title": "MODALITY", "host": "127.0.0.1", "port": mport}})
    try:
        node.stop()  # the node is down; a request it answered before is still owed a report
        txn = generate_uid()
        node.commitment._remember(sc.Report(txn, [sc.Ref(CT, uid["CT0"])]), "MODALITY",
                                  "MODALITY@127.0.0.1")
        again = DicomNode(archive, commitment_reports=commitment.record_report)
        again.start()
        try:
            assert wait_until(lambda: bool(got), 20), "no report after the restart"
            assert got[0].transaction_uid == txn
            assert [r.sop_instance_uid for r in got[0].committed] == [uid["CT0"]]

            def states() -> list:
                with archive.session() as s:
                    return list(s.scalars(select(CommitmentInbound.state)))

            assert wait_until(lambda: states() == ["reported"], 10), states()
        finally:
            again.stop()
    finally:
        server.shutdown()
        archive.close()
