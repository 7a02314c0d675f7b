"""The DICOM node against dcmtk clients (echoscu, storescu, findscu, movescu, getscu) and
dcmtk's storescp as a C-MOVE destination / send target.  Real peers on free ports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from hounsfield.archive.models import Instance
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instance
from hounsfield.audit import query as audit_query
from hounsfield.config import RemoteNode
from hounsfield.dicom.transfer import UNCOMPRESSED
from hounsfield.ingest.stable import detect, stable_state
from hounsfield.pacs.scu import echo, send
from tests.dimse_peers import (  # noqa: F401  (node_factory is a fixture)
    PEER_ENV,
    corpus_unique,
    dcmtk,
    have,
    make_3d_sr_and_pdf,
    make_ct_series,
    node_factory,
    sop_uid,
    wait_until,
)
from tests.helpers import free_port, wait_port

pytestmark = [pytest.mark.peers,
              pytest.mark.skipif(not have("echoscu", "storescu", "findscu", "movescu", "getscu",
                                          "storescp"), reason="dcmtk not installed")]

CORPUS = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR2_J2KR.dcm",
          "US1_J2KI.dcm", "JPEG-lossy.dcm", "SC_jpeg_no_color_transform.dcm", "JPEG-LL.dcm",
          "emri_small_jpeg_ls_lossless.dcm", "image_dfl.dcm",
          "OBXXXX1A_rle_2frame.dcm", "color3d_jpeg_baseline.dcm", "RG1_UNCI.dcm", "liver.dcm",
          "test-SR.dcm", "reportsi.dcm", "rtdose.dcm", "waveform_ecg.dcm", "eCT_Supplemental.dcm"]


def _count(archive) -> int:  # noqa: ANN001
    with archive.session() as s:
        return s.scalar(select(func.count(Instance.id)))


def _aec(node) -> list[str]:  # noqa: ANN001
    return ["-aec", node.settings.dicom.ae_title, "127.0.0.1", str(node.port)]


def _send(node, files) -> None:  # noqa: ANN001
    """dcmsend, keeping every file in its own transfer syntax."""
    r = dcmtk("dcmsend", "-dn", "-aec", node.settings.dicom.ae_title, "127.0.0.1",
              str(node.port), *map(str, files))
    assert r.returncode == 0, r.stdout + r.stderr


def test_echoscu(node_factory):  # noqa: F811
    node = node_factory()
    r = dcmtk("echoscu", "-v", *_aec(node))
    assert r.returncode == 0, r.stderr
    assert "Received Echo Response (Success)" in r.stderr + r.stdout


def test_storescu_every_syntax_and_sop_class(node_factory, tmp_path):  # noqa: F811
    node = node_factory()
    files = corpus_unique(CORPUS) + make_3d_sr_and_pdf(tmp_path / "extra")
    # dcmsend proposes each file's own SOP class and transfer syntax (SEG, 3D SR, compressed)
    r = dcmtk("dcmsend", "-v", "-dn", "-aec", node.settings.dicom.ae_title, "127.0.0.1",
              str(node.port), *map(str, files))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(rf"with status SUCCESS\s*:\s*{len(files)}", out), out
    with node.archive.session() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        row = rows[str(ds.SOPInstanceUID)]
        assert row.sop_class_uid == str(ds.SOPClassUID)
        ts = ds.file_meta.TransferSyntaxUID
        if not ts.is_compressed:  # the sender may pick any uncompressed syntax we accept
            assert row.transfer_syntax_uid in UNCOMPRESSED + ("1.2.840.10008.1.2.1.99",), f.name
            continue
        # compressed objects arrive and stay as they are: pixels never decoded or re-encoded
        assert row.transfer_syntax_uid == str(ts), f.name
        stored = pydicom.dcmread(node.archive.blobs.open(row.blob_key))
        assert stored.PixelData == pydicom.dcmread(f).PixelData, f.name
    # audit: one event per study for this association, not one per instance (written when
    # the association closes)
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}

    def events() -> list:
        with node.archive.session() as s:
            return audit_query(s, {"action": "C-STORE"}, limit=1000)

    assert wait_until(lambda: len(events()) == len(studies), 10)
    events = events()
    assert {e.study_instance_uid for e in events} == studies
    assert len(events) == len(studies)


def test_duplicate_policy(node_factory, tmp_path):  # noqa: F811
    files = make_ct_series(tmp_path / "ct", 2, size=32)
    changed = tmp_path / "changed.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SeriesDescription = "different bytes, same SOPInstanceUID"
    ds.save_as(changed)
    keep = node_factory()
    assert dcmtk("storescu", *_aec(keep), str(files[0])).returncode == 0
    assert dcmtk("storescu", *_aec(keep), str(files[0])).returncode == 0  # identical: success
    r = dcmtk("storescu", "-v", *_aec(keep), str(changed))
    assert "Received Store Response (Unknown Status: 0x111)" in r.stderr, r.stderr  # 0111H
    assert _count(keep.archive) == 1
    with keep.archive.session() as s:
        key = s.scalar(select(Instance.blob_key))
    assert "SeriesDescription" not in pydicom.dcmread(keep.archive.blobs.open(key))  # first kept
    # imported from disk, then re-sent by a modality: the receiver writes its own file meta, the
    # data set is the same object -> success, one copy (was 0111H: compared whole files)
    imported = parse_part10(files[1].read_bytes())
    assert store_instance(keep.archive, imported, source="import").status == "stored"
    r = dcmtk("storescu", "-v", *_aec(keep), str(files[1]))
    assert "Received Store Response (Success)" in r.stderr, r.stderr
    assert _count(keep.archive) == 2 and len(list(keep.archive.blobs.keys())) == 2
    with keep.archive.session() as s:
        row = s.scalar(select(Instance).where(Instance.sop_instance_uid == imported.sop_instance_uid))
    assert row.sha256 == imported.sha256  # the imported file is the copy kept
    # pydicom's CT_small carries Data Set Trailing Padding, which storescu drops when it sends
    ct_small = Path(get_testdata_file("CT_small.dcm"))
    assert store_instance(keep.archive, parse_part10(ct_small.read_bytes()),
                          source="import").status == "stored"
    r = dcmtk("storescu", "-v", *_aec(keep), str(ct_small))
    assert "Received Store Response (Success)" in r.stderr, r.stderr
    assert _count(keep.archive) == 3 and len(list(keep.archive.blobs.keys())) == 3
    replace = node_factory(duplicate_policy="replace")
    assert dcmtk("storescu", *_aec(replace), str(files[0])).returncode == 0
    assert dcmtk("storescu", *_aec(replace), str(changed)).returncode == 0
    assert _count(replace.archive) == 1
    with replace.archive.session() as s:
        key = s.scalar(select(Instance.blob_key))
    stored = pydicom.dcmread(replace.archive.blobs.open(key))
    assert stored.SeriesDescription.startswith("different bytes")


def _find(node, *keys: str, model: str = "-S") -> list[dict[str, str]]:  # noqa: ANN001
    r = dcmtk("findscu", "-v", model, *[a for k in keys for a in ("-k", k)], *_aec(node))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    answers = []
    for block in out.split("Find Response:")[1:]:
        vals = {}
        for m in re.finditer(r"\(([0-9a-f]{4}),([0-9a-f]{4})\) \w\w \[([^\]]*)\]\s+#\s+\d+, \d+ (\w+)",
                             block):
            vals[m.group(4)] = m.group(3).strip().strip("\x00")
        if vals:
            answers.append(vals)
    return answers


def test_findscu_levels_and_matching(node_factory, tmp_path):  # noqa: F811
    node = node_factory()
    files = corpus_unique(["CT_small.dcm", "MR_small_implicit.dcm", "liver.dcm"])
    assert dcmtk("storescu", "-R", *_aec(node), *map(str, files)).returncode == 0
    ct = pydicom.dcmread(files[0], stop_before_pixels=True)
    mr = pydicom.dcmread(files[1], stop_before_pixels=True)
    # study level, universal matching
    got = _find(node, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName",
                "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
    assert len(got) == 3
    # wildcard + case-insensitive PN
    got = _find(node, "QueryRetrieveLevel=STUDY", "PatientName=compressedsamples^c*",
                "StudyInstanceUID")
    assert [g["StudyInstanceUID"] for g in got] == [ct.StudyInstanceUID]
    # date range
    got = _find(node, "QueryRetrieveLevel=STUDY", f"StudyDate={ct.StudyDate}-{ct.StudyDate}",
                "StudyInstanceUID")
    assert ct.StudyInstanceUID in [g["StudyInstanceUID"] for g in got]
    # list of UIDs
    got = _find(node, "QueryRetrieveLevel=STUDY",
                f"StudyInstanceUID={ct.StudyInstanceUID}\\{mr.StudyInstanceUID}", "PatientID")
    assert len(got) == 2
    # series level and image level (study root), patient level (patient root)
    got = _find(node, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={mr.StudyInstanceUID}",
                "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert got and got[0]["Modality"] == "MR" and got[0]["NumberOfSeriesRelatedInstances"] == "1"
    got = _find(node, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ct.StudyInstanceUID}",
                "SOPInstanceUID", "SOPClassUID", "Rows", "KVP")
    assert got and got[0]["SOPInstanceUID"] == ct.SOPInstanceUID and float(got[0]["KVP"]) == float(ct.KVP)
    got = _find(node, "QueryRetrieveLevel=PATIENT", "PatientID=4MR1", "PatientName",
                "NumberOfPatientRelatedStudies", model="-P")
    assert len(got) == 1 and got[0]["NumberOfPatientRelatedStudies"] == "1"
    # a bad query gets a failure status, and the node keeps answering
    r = dcmtk("findscu", "-v", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k",
              "StudyDate=yesterday", *_aec(node))
    out = (r.stderr + r.stdout).lower()
    assert "failed: unabletoprocess" in out, out
    assert len(_find(node, "QueryRetrieveLevel=STUDY", "StudyInstanceUID")) == 3


def _storescp(folder: Path, port: int, extra: list[str] = ()) -> subprocess.Popen:  # noqa: B006
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(folder), *extra, str(port)],
                         env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def test_movescu_and_getscu(node_factory, tmp_path):  # noqa: F811
    dest_port = free_port()
    node = node_factory(remotes={"dest": {"ae_title": "DEST", "host": "127.0.0.1",
                                          "port": dest_port}})
    files = make_ct_series(tmp_path / "ct", 5, size=64) + corpus_unique(["MR2_J2KR.dcm"])
    _send(node, files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    j2k_study = str(pydicom.dcmread(files[-1], stop_before_pixels=True).StudyInstanceUID)
    scp = _storescp(tmp_path / "moved", dest_port)  # default: uncompressed syntaxes only
    try:
        r = dcmtk("movescu", "-v", "-S", "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study}", *_aec(node))
        assert r.returncode == 0, r.stderr
        assert len(list((tmp_path / "moved").iterdir())) == 5
        # JPEG 2000 study to a peer that accepts only uncompressed: transcoded on the way out
        r = dcmtk("movescu", "-S", "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={j2k_study}", *_aec(node))
        assert r.returncode == 0, r.stderr
        assert len(list((tmp_path / "moved").iterdir())) == 6
        # unknown destination: refused with A801, node keeps serving
        r = dcmtk("movescu", "-v", "-S", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study}", *_aec(node))
        assert "Refused: MoveDestinationUnknown" in r.stdout + r.stderr, r.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    got = tmp_path / "got"
    got.mkdir()
    r = dcmtk("getscu", "-v", "-S", "-od", str(got), "-k", "QueryRetrieveLevel=SERIES",
              "-k", f"StudyInstanceUID={study}", "-k",
              f"SeriesInstanceUID={pydicom.dcmread(files[0]).SeriesInstanceUID}", *_aec(node))
    assert r.returncode == 0, r.stderr
    assert sorted(pydicom.dcmread(p).SOPInstanceUID for p in got.iterdir()) == \
        sorted(sop_uid(f) for f in files[:5])
    def audited() -> set[str]:  # written when each association closes (after the peer left)
        with node.archive.session() as s:
            return {e.action for e in audit_query(s, limit=100)}

    assert wait_until(lambda: {"C-STORE", "C-MOVE", "C-GET"} <= audited(), 10), audited()


def test_scu_send_transcodes_for_storescp(node_factory, tmp_path):  # noqa: F811
    node = node_factory()
    files = corpus_unique(["MR2_J2KR.dcm", "CT_small.dcm"])
    _send(node, files)
    port = free_port()
    scp = _storescp(tmp_path / "out", port)
    try:
        remote = RemoteNode(ae_title="DEST", host="127.0.0.1", port=port)
        assert echo(node.settings, remote) > 0
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
        report = send(node.archive, uids, remote)
    finally:
        scp.terminate()
        scp.wait(10)
    assert report.ok and report.sent == 2, [(i.status, i.detail) for i in report.items]
    assert any("transcoded" in i.detail for i in report.items)
    received = [pydicom.dcmread(p) for p in (tmp_path / "out").iterdir()]
    assert {str(d.file_meta.TransferSyntaxUID) for d in received} <= {
        "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}


def test_stable_events(node_factory, tmp_path):  # noqa: F811
    node = node_factory(stable_after_s=0.5)
    files = make_ct_series(tmp_path / "ct", 3, size=32)
    assert dcmtk("storescu", *_aec(node), *map(str, files)).returncode == 0
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert stable_state(node.archive, [study])[study] is None  # still receiving
    import time

    time.sleep(0.7)
    events = detect(node.archive)
    assert {(e.level, e.instances) for e in events} == {("SERIES", 3), ("STUDY", 3)}
    assert stable_state(node.archive, [study])[study] is not None
    assert detect(node.archive) == []  # recorded once
    # a late instance: receiving again, then a new stable event
    more = make_ct_series(tmp_path / "late", 1, size=32, study_uid=study)
    assert dcmtk("storescu", *_aec(node), *map(str, more)).returncode == 0
    assert stable_state(node.archive, [study])[study] is None
    time.sleep(0.7)
    assert {(e.level, e.instances) for e in detect(node.archive)} >= {("STUDY", 4)}


def test_cli_echo_send_pull_studies(node_factory, tmp_path):  # noqa: F811
    """The commands a user runs: echo, send (to storescp), pull (C-GET), studies."""
    from typer.testing import CliRunner

    from hounsfield.cli.main import app

    node = node_factory()
    files = make_ct_series(tmp_path / "ct", 3, size=32, patient_id="CLI1")
    _send(node, files)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "cli-var"), "--profile", "demo"]
    target = f"HOUNSFIELD@127.0.0.1:{node.port}"
    r = runner.invoke(app, [*base, "echo", target])
    assert r.exit_code == 0 and "Success" in r.output, r.output
    r = runner.invoke(app, [*base, "echo", "nowhere"])
    assert r.exit_code == 2 and "unknown destination" in r.output
    r = runner.invoke(app, [*base, "pull", "--from", target, "--method", "get", "PatientID=CLI1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "studies"])
    assert study[:20] in r.output.replace("\n", "").replace(" ", "").replace("│", "") or \
        "1 studies" in r.output, r.output
    port = free_port()
    scp = _storescp(tmp_path / "out", port)
    try:
        r = runner.invoke(app, [*base, "send", study, "--to", f"DEST@127.0.0.1:{port}"])
    finally:
        scp.terminate()
        scp.wait(10)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").iterdir())) == 3


@pytest.mark.postgres
def test_store_find_move_on_postgresql(node_factory, postgres, tmp_path):  # noqa: F811
    """The same node on a PostgreSQL index: concurrent C-STOREs, C-FIND, C-GET."""
    import subprocess as sp

    url = postgres.create_db(f"hf_dimse_{tmp_path.name[:20].lower()}")
    node = node_factory(database_url=url)
    sets = [make_ct_series(tmp_path / f"s{i}", 4, size=32, patient_id=f"PG{i}", seed=i)
            for i in range(4)]
    procs = [sp.Popen(["storescu", *_aec(node), *map(str, f)], env=PEER_ENV) for f in sets]
    assert [p.wait(120) for p in procs] == [0] * 4
    assert _count(node.archive) == 16
    got = _find(node, "QueryRetrieveLevel=STUDY", "PatientID=PG*", "StudyInstanceUID",
                "NumberOfStudyRelatedInstances")
    assert len(got) == 4 and {g["NumberOfStudyRelatedInstances"] for g in got} == {"4"}
    out = tmp_path / "got"
    out.mkdir()
    study = str(pydicom.dcmread(sets[2][0]).StudyInstanceUID)
    r = dcmtk("getscu", "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={study}", *_aec(node))
    assert r.returncode == 0 and len(list(out.iterdir())) == 4, r.stderr
