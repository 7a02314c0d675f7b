"""The MPPS SCP (PS3.4 F.7) of the DICOM node, driven by pynetdicom as the modality's SCU (not
our code), with dcmtk's storescu for the images: N-CREATE / N-SET accepted and refused with the
standard's statuses (named in the ErrorComment), nothing half-applied, everything audited, and
the node serving on after each refusal.  MPPS associations go to pynetdicom, not the lean path,
and a modality may mix storage and MPPS on one association."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from tests.dimse_peers import PEER_ENV, have, node_factory  # noqa: F401 - pytest fixture
from tests.mpps_modality import Modality, create_attrs, final_mods, performed_series
from tests.pipeline_helpers import demo_ct

pytestmark = [pytest.mark.peers, pytest.mark.timeout(300)]

NO_LONGER = "Performed Procedure Step Object may no longer be updated"


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> list[Path]:
    files, _case = demo_ct(tmp_path_factory.mktemp("ct") / "ct", seed=21, patient="MPPS^SCP")
    return files[:6]  # a few slices are enough here


def _rows(node):  # noqa: ANN001, ANN202
    from hounsfield.ingest.mpps import list_mpps

    return list_mpps(node.archive)


def _audit(node, action: str) -> list:  # noqa: ANN001
    from hounsfield.audit.models import AuditEvent

    with node.archive.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))


def _instances(node, uid: str) -> int:  # noqa: ANN001
    from hounsfield.ingest.models import PerformedInstance, PerformedProcedureStep as PPS

    with node.archive.session() as s:
        return s.scalar(select(func.count(PerformedInstance.id)).join(
            PPS, PPS.id == PerformedInstance.mpps_pk).where(PPS.sop_instance_uid == uid))


def test_create_update_complete_round_trip_and_audit(node_factory, ct):  # noqa: F811
    node = node_factory()
    study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    uid = generate_uid()
    with Modality(node.port) as m:
        assert m.create(create_attrs(study), uid) == (0, "", None)
        progress = final_mods("IN PROGRESS")
        progress.PerformedProcedureStepDescription = "CT chest, contrast"
        del progress.PerformedProcedureStepEndDate, progress.PerformedProcedureStepEndTime
        assert m.set(uid, progress)[0] == 0
        (row,) = _rows(node)
        assert row.state == "IN PROGRESS" and row.trigger_state == ""
        assert row.description == "CT chest, contrast"
        assert m.set(uid, final_mods("COMPLETED", performed_series(ct)))[0] == 0
    (row,) = _rows(node)
    assert row.sop_instance_uid == uid and row.state == "COMPLETED"
    assert row.study_instance_uid == study and row.study_uids == [study]
    assert (row.patient_id, row.accession_number, row.modality, row.calling_ae) == \
        ("PIPE1", "ACC1", "CT", "MODALITY")
    assert row.trigger_state == "waiting" and row.n_referenced == len(ct)
    assert _instances(node, uid) == len(ct)
    ds = pydicom.Dataset.from_json(row.dataset)  # the instance as it stands, DICOM JSON
    assert ds.PerformedProcedureStepStatus == "COMPLETED"
    assert len(ds.PerformedSeriesSequence[0].ReferencedImageSequence) == len(ct)
    created, = _audit(node, "MPPS-N-CREATE")
    sets = _audit(node, "MPPS-N-SET")
    assert created.event_id == "110111 Procedure Record" and created.event_action == "C"
    assert created.outcome == 0 and created.actor == "MODALITY"
    assert created.study_instance_uid == study and created.patient_id == "PIPE1"
    assert [e.event_action for e in sets] == ["U", "U"] and all(e.outcome == 0 for e in sets)
    assert f"{len(ct)} instance(s) in 1 series" in sets[-1].detail


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_n_create_refusals_name_the_problem(node_factory):  # noqa: F811
    node = node_factory()
    study = generate_uid()
    with Modality(node.port) as m:
        code, comment, _ = m.create(create_attrs(study, state="COMPLETED"), generate_uid())
        assert code == 0x0106 and "(0040,0252)" in comment and "IN PROGRESS" in comment
        assert m.echo() == 0
        for kw in ("ScheduledStepAttributesSequence", "PerformedProcedureStepID",
                   "PerformedStationAETitle", "PerformedProcedureStepStartDate",
                   "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus",
                   "Modality"):
            attrs = create_attrs(study)
            delattr(attrs, kw)
            code, comment, _ = m.create(attrs, generate_uid())
            assert code == 0x0120 and kw in comment, (kw, hex(code), comment)
        attrs = create_attrs(study)
        attrs.Modality = ""
        code, comment, _ = m.create(attrs, generate_uid())
        assert code == 0x0121 and "Modality" in comment
        attrs = create_attrs(study)
        del attrs.ScheduledStepAttributesSequence[0].StudyInstanceUID
        code, comment, _ = m.create(attrs, generate_uid())
        assert code == 0x0120 and "StudyInstanceUID" in comment
        attrs = create_attrs("not-a-uid")
        assert m.create(attrs, generate_uid())[0] == 0x0106
        assert m.echo() == 0
        uid = generate_uid()
        assert m.create(create_attrs(study), uid)[0] == 0
        code, comment, _ = m.create(create_attrs(study), uid)
        assert code == 0x0111 and "already exists" in comment
        # no Affected SOP Instance UID: the SCP assigns one (PS3.7 10.1.5.1.4)
        assert m.create(create_attrs(study), None)[0] == 0
        assert m.echo() == 0
    rows = _rows(node)
    assert len(rows) == 2 and uid in {r.sop_instance_uid for r in rows}
    failures = [e for e in _audit(node, "MPPS-N-CREATE") if e.outcome != 0]
    assert len(failures) == 12 and all("refused 0x" in e.detail for e in failures)


def test_n_set_refusals_and_nothing_half_applied(node_factory, ct):  # noqa: F811
    node = node_factory()
    study = generate_uid()
    uid, other = generate_uid(), generate_uid()
    with Modality(node.port) as m:
        # an instance never created here
        code, comment, _ = m.set(generate_uid(), final_mods("COMPLETED", performed_series(ct)))
        assert code == 0x0112 and "no MPPS" in comment
        assert m.create(create_attrs(study), uid)[0] == 0
        # an unknown state
        bad = final_mods("COMPLETED", performed_series(ct))
        bad.PerformedProcedureStepStatus = "FINISHED"
        code, comment, _ = m.set(uid, bad)
        assert code == 0x0106 and "FINISHED" in comment
        # COMPLETED without the series it made: refused, and nothing of it applied
        no_series = final_mods("COMPLETED")
        no_series.PerformedProcedureStepDescription = "must not stick"
        code, comment, _ = m.set(uid, no_series)
        assert code == 0x0120 and "PerformedSeriesSequence" in comment
        (row,) = _rows(node)
        assert row.state == "IN PROGRESS" and row.description == "CT chest"
        assert row.ended_at is None and _instances(node, uid) == 0
        assert m.echo() == 0
        # attributes an N-SET may not change are ignored, the rest applied
        mods = final_mods("COMPLETED", performed_series(ct))
        mods.PatientID = "SOMEONE-ELSE"
        assert m.set(uid, mods)[0] == 0
        (row,) = _rows(node)
        assert row.state == "COMPLETED" and row.patient_id == "PIPE1"
        assert pydicom.Dataset.from_json(row.dataset).PatientID == "PIPE1"
        assert "ignored: PatientID" in row.note
        # a COMPLETED step may no longer be updated (PS3.4 Table F.7.2-2)
        for attempt in (final_mods("COMPLETED", performed_series(ct)), final_mods("IN PROGRESS")):
            code, comment, error_id = m.set(uid, attempt)
            assert (code, comment, error_id) == (0x0110, NO_LONGER, 0xA710)
        # nor a DISCONTINUED one
        assert m.create(create_attrs(study), other)[0] == 0
        assert m.set(other, final_mods("DISCONTINUED"))[0] == 0
        assert m.set(other, final_mods("COMPLETED", performed_series(ct))) == \
            (0x0110, NO_LONGER, 0xA710)
        assert m.echo() == 0
    rows = {r.sop_instance_uid: r for r in _rows(node)}
    assert rows[uid].n_referenced == len(ct) and _instances(node, uid) == len(ct)
    assert rows[other].state == "DISCONTINUED" and rows[other].trigger_state == "discontinued"
    assert "Incorrect worklist entry selected" in rows[other].note
    refused = [e for e in _audit(node, "MPPS-N-SET") if e.outcome != 0]
    assert len(refused) == 6
    assert any("may no longer be updated" in e.detail and e.study_instance_uid == study
               for e in refused)


def test_mpps_goes_to_pynetdicom_storage_stays_lean_and_both_mix(node_factory, ct):  # noqa: F811
    if not have("storescu"):
        pytest.skip("dcmtk missing")
    node = node_factory()
    first = [pydicom.dcmread(f) for f in ct[:3]]
    study = str(first[0].StudyInstanceUID)
    uid = generate_uid()
    lean = node.lean_associations
    # one association with storage and MPPS: N-CREATE, C-STORE, N-SET, as a modality may do
    with Modality(node.port, storage=[str(first[0].SOPClassUID)]) as m:
        assert m.create(create_attrs(study), uid)[0] == 0
        assert [m.store(ds) for ds in first] == [0, 0, 0]
        assert m.set(uid, final_mods("COMPLETED", performed_series(ct[:3])))[0] == 0
    assert node.lean_associations == lean  # the MPPS association was pynetdicom's
    # dcmtk's storescu (storage only) is still served on the lean path
    r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1",
                        str(node.port), *map(str, ct[3:])], env=PEER_ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert node.lean_associations == lean + 1
    from hounsfield.archive.models import Instance

    with node.archive.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == len(ct)
    (row,) = _rows(node)
    assert row.state == "COMPLETED" and row.n_referenced == 3
    # C-STORE audit events are still written per association
    assert _audit(node, "C-STORE")


def test_on_postgresql_concurrent_n_sets_apply_once(node_factory, postgres, ct,  # noqa: F811
                                                    tmp_path):
    """On a PostgreSQL index, modalities racing to end the same step: exactly one N-SET
    COMPLETED wins (the row is locked for the update); the others get A710; then the trigger's
    pass routes it once."""
    import threading
    from datetime import timedelta

    if not have("storescu"):
        pytest.skip("dcmtk missing")
    from hounsfield.archive.models import utcnow
    from hounsfield.deploy.mpps_trigger import route_mpps

    url = postgres.create_db(f"hf_mpps_{tmp_path.name[:20].lower()}")
    node = node_factory(database_url=url)
    study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    uid = generate_uid()
    with Modality(node.port) as m:
        assert m.create(create_attrs(study), uid)[0] == 0
    results: list[tuple] = []

    def finish() -> None:
        with Modality(node.port) as m:
            results.append(m.set(uid, final_mods("COMPLETED", performed_series(ct))))

    threads = [threading.Thread(target=finish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r[0] for r in results) == [0, 0x0110, 0x0110, 0x0110], results
    assert _instances(node, uid) == len(ct)
    r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1",
                        str(node.port), *map(str, ct)], env=PEER_ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    enabled = utcnow() - timedelta(hours=1)
    assert route_mpps(node.archive, enabled=enabled) == [(uid, "no-rule")]
    assert route_mpps(node.archive, enabled=enabled) == []
