"""The DICOM node with Orthanc (Debian) as the peer PACS: Orthanc sends a study to us and
queries/retrieves from us; we C-FIND and C-MOVE/C-GET studies out of Orthanc and send results
into it.  Orthanc runs on free ports with a temporary config, used over loopback only."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from hounsfield.archive.models import Instance
from hounsfield.archive.query import instances_of
from hounsfield.config import RemoteNode
from hounsfield.pacs.pull import pull
from hounsfield.pacs.scu import echo, send
from tests.dimse_peers import (  # noqa: F401  (node_factory is a fixture)
    Orthanc,
    corpus_unique,
    have,
    make_ct_series,
    node_factory,
    wait_until,
)
from tests.helpers import free_port

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("Orthanc"),
                                                    reason="Orthanc not installed")]


@pytest.fixture
def pair(node_factory, tmp_path):  # noqa: F811
    """(our node, Orthanc, Orthanc as a RemoteNode), each knowing the other."""
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"hf": ("HOUNSFIELD", "127.0.0.1", port)})
    orthanc.start()
    remote = RemoteNode(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)
    node = node_factory(port=port, remotes={"orthanc": remote.model_dump()})
    yield node, orthanc, remote
    orthanc.stop()


def _count(node) -> int:  # noqa: ANN001
    with node.archive.session() as s:
        return s.scalar(select(func.count(Instance.id)))


def test_orthanc_sends_a_study_to_us(pair, tmp_path):
    node, orthanc, _remote = pair
    files = make_ct_series(tmp_path / "ct", 8, size=64, patient_id="ORTH1")
    orthanc.upload(files)
    studies = orthanc.rest("/studies")
    assert len(studies) == 1
    orthanc.rest("/modalities/hf/store", {"Resources": studies, "Synchronous": True})
    assert _count(node) == 8
    # Orthanc queries and retrieves from us (a PACS using Hounsfield as a node)
    answers = orthanc.rest("/modalities/hf/query",
                           {"Level": "Study", "Query": {"PatientID": "ORTH1"}})
    content = orthanc.rest(f"{answers['Path']}/answers/0/content?simplify")
    assert content["PatientID"] == "ORTH1"


def test_we_find_and_move_a_study_out_of_orthanc(pair, tmp_path):
    node, orthanc, remote = pair
    assert echo(node.settings, remote) > 0
    orthanc.upload(make_ct_series(tmp_path / "a", 6, size=64, patient_id="PULLME"))
    orthanc.upload(make_ct_series(tmp_path / "b", 3, size=64, patient_id="OTHER"))
    report = pull(node.archive, remote, {"PatientID": "PULLME"}, method="move")
    assert report.ok and len(report.items) == 1, [(i.status, i.detail) for i in report.items]
    assert _count(node) == 6
    report = pull(node.archive, remote, {"PatientID": "OTH*"}, method="get")
    assert report.ok, [(i.status, i.detail) for i in report.items]
    assert _count(node) == 9
    nothing = pull(node.archive, remote, {"PatientID": "NOBODY"})
    assert not nothing.items and nothing.notes


def test_we_send_results_into_orthanc(pair, tmp_path):
    node, orthanc, remote = pair
    files = make_ct_series(tmp_path / "ct", 4, size=64) + corpus_unique(["liver.dcm",
                                                                          "MR2_J2KR.dcm"])
    from tests.integration.test_dimse_dcmtk import _send

    _send(node, files)
    with node.archive.session() as s:
        uids = sorted({i.series.study.study_instance_uid for i in s.scalars(select(Instance))})
        n = sum(len(instances_of(s, u)) for u in uids)
    report = send(node.archive, uids, remote)
    assert report.ok and report.sent == n, [(i.status, i.detail) for i in report.items]
    assert wait_until(lambda: len(orthanc.rest("/instances")) == n, 10)
    # the delivery log has every instance
    from hounsfield.pacs.models import Delivery

    with node.archive.session() as s:
        assert s.scalar(select(func.count(Delivery.id))) == n


def test_orthanc_moves_from_us_to_itself(pair, tmp_path):
    node, orthanc, remote = pair
    from tests.integration.test_dimse_dcmtk import _send

    files = make_ct_series(tmp_path / "ct", 5, size=64, patient_id="MOVEDBACK")
    _send(node, files)
    import pydicom

    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    orthanc.rest("/modalities/hf/move", {"Level": "Study", "TargetAet": orthanc.aet,
                                         "Resources": [{"StudyInstanceUID": study}]})
    assert wait_until(lambda: len(orthanc.rest("/instances")) == 5, 20)
