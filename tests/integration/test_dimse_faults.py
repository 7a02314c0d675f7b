"""Bad input and faults at the DICOM node: every case gets the right status or rejection,
nothing partial is indexed, and the node keeps serving."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pynetdicom._config
import pytest
from pynetdicom import AE
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_FIND_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_CANCEL, C_FIND, C_STORE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import func, select

from hounsfield.archive.check import check
from hounsfield.archive.models import Instance
from hounsfield.config import RemoteNode
from hounsfield.dicom.codec import encode_dataset
from hounsfield.pacs.scu import echo
from tests.dimse_peers import (  # noqa: F401  (node_factory is a fixture)
    PEER_ENV,
    corpus_unique,
    dcmtk,
    have,
    make_ct_series,
    node_factory,
)

pytestmark = [pytest.mark.peers,
              pytest.mark.skipif(not have("echoscu", "storescu", "dcmsend"),
                                 reason="dcmtk not installed")]


def _count(node) -> int:  # noqa: ANN001
    with node.archive.session() as s:
        return s.scalar(select(func.count(Instance.id)))


def _aec(node, calling: str = "STORESCU") -> list[str]:  # noqa: ANN001
    return ["-aet", calling, "-aec", node.settings.dicom.ae_title, "127.0.0.1", str(node.port)]


def _echo_ok(node) -> bool:  # noqa: ANN001
    return dcmtk("echoscu", *_aec(node)).returncode == 0


def _scu(node, contexts=(CTImageStorage,)):  # noqa: ANN001, ANN202
    ae = AE("FAULTY")
    for c in contexts:
        ae.add_requested_context(c)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.dicom.ae_title)
    assert assoc.is_established
    return assoc


def _send_raw(node, path: Path, monkeypatch) -> int:  # noqa: ANN001
    """C-STORE a file's bytes as they are (pynetdicom streams the data set without decoding;
    the request's UIDs come from the file meta)."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = _scu(node)
    try:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status)
    finally:
        assoc.release()


def _with_meta(src: Path, dst: Path, *, meta_sop: str | None = None, body: bytes | None = None,
               cut: int | None = None) -> Path:
    ds = pydicom.dcmread(src)
    if meta_sop:
        ds.file_meta.MediaStorageSOPInstanceUID = meta_sop
    ds.save_as(dst)
    raw = dst.read_bytes()
    if body is not None:
        meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
        raw = raw[:meta_end] + body
    if cut is not None:
        raw = raw[:cut]
    dst.write_bytes(raw)
    return dst


LEAN = pytest.mark.parametrize("lean", [True, False], ids=["lean-path", "pynetdicom-path"])


@LEAN
def test_uid_mismatch_garbage_truncated(node_factory, tmp_path, monkeypatch, lean):  # noqa: F811
    node = node_factory(lean_storage=lean)
    good = make_ct_series(tmp_path / "ct", 1, size=64)[0]
    mismatch = _with_meta(good, tmp_path / "mismatch.dcm", meta_sop="1.2.826.0.1.99.1")
    assert _send_raw(node, mismatch, monkeypatch) == 0xA900
    garbage = _with_meta(good, tmp_path / "garbage.dcm", body=b"\x08\x00\x16\x00UI\xff\x7f" +
                         bytes(range(256)) * 4)
    assert _send_raw(node, garbage, monkeypatch) == 0xC000
    size = good.stat().st_size
    truncated = _with_meta(good, tmp_path / "truncated.dcm", cut=size - 3000)
    assert _send_raw(node, truncated, monkeypatch) == 0xC000
    # required attributes missing (a real file from pydicom's corpus): refused with a reason
    no_study = corpus_unique(["JPEGLSNearLossless_08.dcm"])[0]
    r = dcmtk("dcmsend", "-v", "-dn", "-aec", "HOUNSFIELD", "127.0.0.1", str(node.port),
              str(no_study))
    assert "with status ERROR    : 1" in r.stdout + r.stderr, r.stderr
    assert _count(node) == 0
    assert check(node.archive).clean
    assert _send_raw(node, good, monkeypatch) == 0x0000
    assert _count(node) == 1 and _echo_ok(node)
    assert (node.lean_associations > 0) == lean


@LEAN
def test_peer_aborts_mid_dataset(node_factory, tmp_path, lean):  # noqa: F811
    node = node_factory(lean_storage=lean)
    f = make_ct_series(tmp_path / "ct", 1, size=256)[0]
    ds = pydicom.dcmread(f)
    assoc = _scu(node)
    cx = assoc.accepted_contexts[0]
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 2
    raw = f.read_bytes()
    req.DataSet = BytesIO(raw[132 + 12 + int.from_bytes(raw[140:144], "little"):])
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    for i, pdata in enumerate(msg.encode_msg(cx.context_id, 16382)):
        if i == 4:  # command + 3 of ~9 data set fragments
            break
        assoc.dul.send_pdu(pdata)
    time.sleep(0.2)
    assoc.abort()
    time.sleep(0.5)
    assert _count(node) == 0 and check(node.archive).clean
    assert _echo_ok(node)
    # storescu killed with -9 in the middle of a large data set
    big = make_ct_series(tmp_path / "big", 1, size=4096)[0]
    p = subprocess.Popen(["storescu", *_aec(node), str(big)], env=PEER_ENV)
    time.sleep(0.15)
    p.kill()
    p.wait()
    time.sleep(0.5)
    assert check(node.archive).clean and _echo_ok(node)


@LEAN
def test_peer_never_releases(node_factory, lean):  # noqa: F811
    node = node_factory(network_timeout_s=1.0, lean_storage=lean)
    idle = _scu(node, contexts=(Verification,))
    t0 = time.monotonic()
    assert _echo_ok(node)  # others are served meanwhile
    while idle.is_established and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not idle.is_established and idle.is_aborted  # the node dropped it
    assert _echo_ok(node)


def test_twenty_associations_at_once(node_factory, tmp_path):  # noqa: F811
    node = node_factory()
    sets = [make_ct_series(tmp_path / f"s{i}", 5, size=64, patient_id=f"P{i}", seed=i)
            for i in range(20)]
    procs = [subprocess.Popen(["storescu", *_aec(node), *map(str, files)], env=PEER_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for files in sets]
    codes = [p.wait(120) for p in procs]
    assert codes == [0] * 20, [p.stdout.read().decode()[-500:] for p in procs if p.returncode]
    assert _count(node) == 100 and check(node.archive).clean
    assert node.committer.batches < node.committer.instances  # group commit did group


@pytest.mark.parametrize("held_contexts", [(Verification,), (StudyRootQueryRetrieveInformationModelFind,)],
                         ids=["lean-held", "pynetdicom-held"])
def test_association_limit(node_factory, held_contexts):  # noqa: F811
    """The limit counts associations on both paths (lean storage and pynetdicom)."""
    node = node_factory(max_associations=2)
    held = [_scu(node, contexts=held_contexts) for _ in range(2)]
    r = dcmtk("echoscu", "-v", *_aec(node))
    assert r.returncode != 0 and "Rejected" in r.stdout + r.stderr
    for a in held:
        a.release()
    time.sleep(0.3)
    assert _echo_ok(node)


def test_calling_and_called_ae_checks(node_factory):  # noqa: F811
    node = node_factory(profile="production",
                        allowed_peers={"GOOD": "127.0.0.1", "FAR": "10.9.9.9", "ANY": "*"})
    assert dcmtk("echoscu", *_aec(node, "GOOD")).returncode == 0
    assert dcmtk("echoscu", *_aec(node, "ANY")).returncode == 0
    for calling in ("BAD", "FAR"):
        r = dcmtk("echoscu", "-v", *_aec(node, calling))
        assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stdout + r.stderr, \
            r.stderr
    r = dcmtk("echoscu", "-v", "-aet", "GOOD", "-aec", "WRONG", "127.0.0.1", str(node.port))
    assert r.returncode != 0 and "Called AE Title Not Recognized" in r.stdout + r.stderr
    # production with an empty allow-list admits nobody
    closed = node_factory(profile="production")
    assert dcmtk("echoscu", *_aec(closed, "GOOD")).returncode != 0
    from hounsfield.audit import query

    with node.archive.session() as s:
        assert len(query(s, {"action": "LOGIN", "outcome": "8"})) == 3


def _pki(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server and a client certificate (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def key():  # noqa: ANN202
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("hf test CA")).issuer_name(name("hf test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(f"hf {who}")).issuer_name(ca.subject)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                               x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[f"{who}_cert"] = folder / f"{who}.pem"
        out[f"{who}_key"] = folder / f"{who}.key"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return out


def test_tls(node_factory, tmp_path):  # noqa: F811
    pki = _pki(tmp_path / "pki")
    node = node_factory(tls_cert=str(pki["server_cert"]), tls_key=str(pki["server_key"]),
                        tls_ca=str(pki["ca"]))
    ok = dcmtk("echoscu", "+tls", str(pki["client_key"]), str(pki["client_cert"]),
               "+cf", str(pki["ca"]), *_aec(node))
    assert ok.returncode == 0, ok.stderr
    no_cert = dcmtk("echoscu", "+tla", "+cf", str(pki["ca"]), *_aec(node))
    assert no_cert.returncode != 0
    plain = dcmtk("echoscu", *_aec(node), timeout=60)
    assert plain.returncode != 0
    assert dcmtk("echoscu", "+tls", str(pki["client_key"]), str(pki["client_cert"]),
                 "+cf", str(pki["ca"]), *_aec(node)).returncode == 0
    # our own SCU over TLS, presenting the node's certificate as client certificate
    client_settings = node.settings.model_copy(update={"dicom": node.settings.dicom.model_copy(
        update={"tls_cert": pki["client_cert"], "tls_key": pki["client_key"]})})
    remote = RemoteNode(ae_title="HOUNSFIELD", host="127.0.0.1", port=node.port, tls=True)
    assert echo(client_settings, remote) > 0


def test_concurrent_store_and_find_keep_serving(node_factory, tmp_path):  # noqa: F811
    node = node_factory()
    files = make_ct_series(tmp_path / "ct", 20, size=64)
    errors: list[str] = []

    def finder() -> None:
        for _ in range(5):
            r = dcmtk("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                      *_aec(node))
            if r.returncode:
                errors.append(r.stderr)

    t = threading.Thread(target=finder)
    t.start()
    r = dcmtk("storescu", *_aec(node), *map(str, files))
    t.join()
    assert r.returncode == 0 and not errors
    assert _count(node) == 20


def test_paths_chosen_by_proposed_contexts(node_factory, tmp_path):  # noqa: F811
    """Senders and queriers (storage, verification, C-FIND) take the lean path; an association
    that also proposes C-MOVE / C-GET, or asks for role selection, goes through pynetdicom."""
    node = node_factory()
    files = make_ct_series(tmp_path / "ct", 3, size=64)
    r = dcmtk("storescu", *_aec(node), *map(str, files))
    assert r.returncode == 0, r.stderr
    assert node.lean_associations == 1 and _count(node) == 3
    mixed = _scu(node, contexts=(CTImageStorage, StudyRootQueryRetrieveInformationModelMove))
    status = mixed.send_c_store(pydicom.dcmread(make_ct_series(tmp_path / "m", 1, size=64,
                                                               patient_id="PM", seed=5)[0]))
    mixed.release()
    assert int(status.Status) == 0 and _count(node) == 4
    assert node.lean_associations == 1  # the mixed association went through pynetdicom


def test_lean_path_protocol_faults(node_factory, tmp_path):  # noqa: F811
    """A C-STORE whose SOP class is not its context's gets 0x0122; a P-DATA on a context that
    was never accepted aborts the association; the node keeps serving."""
    node = node_factory()
    f = make_ct_series(tmp_path / "ct", 1, size=64)[0]
    raw = f.read_bytes()
    body = raw[132 + 12 + int.from_bytes(raw[140:144], "little"):]

    def store_rq(assoc, sop_class: str, context_id: int) -> None:  # noqa: ANN001
        req = C_STORE()
        req.MessageID = 7
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = pydicom.dcmread(f).SOPInstanceUID
        req.Priority = 2
        req.DataSet = BytesIO(body)
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        for pdata in msg.encode_msg(context_id, 16382):
            assoc.dul.send_pdu(pdata)

    assoc = _scu(node)
    # pause the requestor's reactor as pynetdicom's own send_*() do, so the response is ours
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    store_rq(assoc, "1.2.840.10008.5.1.4.1.1.4", assoc.accepted_contexts[0].context_id)  # MR
    _cx, rsp = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assert rsp is not None and int(rsp.Status) == 0x0122 and "context" in str(rsp.ErrorComment)
    assoc.release()
    assoc = _scu(node)
    store_rq(assoc, str(CTImageStorage), 99)  # context 99 was never proposed
    deadline = time.monotonic() + 10
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert _count(node) == 0 and check(node.archive).clean and _echo_ok(node)
    assert node.lean_associations >= 2


def _study_query(**filters) -> Dataset:  # noqa: ANN003
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in ("StudyInstanceUID", "PatientName", "PatientID", "ModalitiesInStudy",
              "NumberOfStudyRelatedInstances", "ReferencedStudySequence"):
        setattr(ds, k, "")
    for k, v in filters.items():
        setattr(ds, k, v)
    return ds


def test_find_on_the_lean_path(node_factory, tmp_path):  # noqa: F811
    """C-FIND on a query-only association is answered on the lean path with exactly the
    responses pynetdicom's path gives; a bad identifier gets its status; a C-CANCEL-RQ that
    arrives while the query runs ends it with Cancel (PS3.7 9.3.2.3); the node keeps serving."""
    node = node_factory()
    files = [make_ct_series(tmp_path / f"s{i}", 1, size=16, patient_id=f"PF{i}", seed=60 + i)[0]
             for i in range(6)]
    r = dcmtk("storescu", *_aec(node), *map(str, files))
    assert r.returncode == 0, r.stderr

    def query(contexts, ds):  # noqa: ANN001, ANN202
        assoc = _scu(node, contexts=contexts)
        found, final = [], None
        for status, ident in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            if int(status.Status) in (0xFF00, 0xFF01):
                found.append(ident)
            else:
                final = int(status.Status)
        assoc.release()
        return final, sorted((x.PatientID, x.StudyInstanceUID, int(x.NumberOfStudyRelatedInstances),
                              x.ModalitiesInStudy, str(x.SpecificCharacterSet),
                              len(x.ReferencedStudySequence)) for x in found)

    find_only = (StudyRootQueryRetrieveInformationModelFind,)
    with_move = (*find_only, StudyRootQueryRetrieveInformationModelMove)
    before = node.lean_associations
    lean = query(find_only, _study_query(PatientID="PF*"))
    assert node.lean_associations == before + 1
    full = query(with_move, _study_query(PatientID="PF*"))
    assert node.lean_associations == before + 1  # C-MOVE proposed: pynetdicom's path
    assert lean == full and lean[0] == 0 and len(lean[1]) == 6
    assert lean[1][0][2:5] == (1, "CT", "ISO_IR 192")
    no_level = _study_query(PatientID="PF1")
    del no_level.QueryRetrieveLevel
    assert query(find_only, no_level) == query(with_move, no_level) == (0xA900, [])

    # C-FIND-RQ and C-CANCEL-RQ sent back to back: the cancel is read before the first match
    assoc = _scu(node, contexts=find_only)
    assoc._reactor_checkpoint.clear()  # the responses are read here, not by the reactor
    while not assoc._is_paused:
        time.sleep(0.001)
    ctx = assoc.accepted_contexts[0].context_id
    ts = str(assoc.accepted_contexts[0].transfer_syntax[0])
    req = C_FIND()
    req.MessageID, req.Priority = 11, 2
    req.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    req.Identifier = BytesIO(encode_dataset(_study_query(PatientID="PF*"), ts))
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 11
    for prim, msg in ((req, C_FIND_RQ()), (cancel, C_CANCEL_RQ())):
        msg.primitive_to_message(prim)
        for pdata in msg.encode_msg(ctx, 16382):
            assoc.dul.send_pdu(pdata)
    pending = 0
    while True:
        _cx, rsp = assoc.dimse.get_msg(block=True)
        assert rsp is not None
        if int(rsp.Status) not in (0xFF00, 0xFF01):
            break
        pending += 1
    assoc._reactor_checkpoint.set()
    assert int(rsp.Status) == 0xFE00 and pending < 6
    assoc.release()
    assert _echo_ok(node) and query(find_only, _study_query(PatientID="PF2"))[0] == 0
