"""Superseded results on a real archive (SQLite + blob folder): which old objects a re-run
names as predecessors, and the IOCM rejection note per destination — only what that
destination acknowledged, only where its profile says "iocm", the same note on a retry."""

from __future__ import annotations

import datetime as dt
import io
from types import SimpleNamespace

import pydicom
import pytest

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.deploy.models import AiJob
from hounsfield.deploy.supersede import REJECTION, predecessor_refs, rejection_for
from hounsfield.imaging import volume_from_datasets
from hounsfield.pacs.models import Delivery
from hounsfield.results import AIModel, build_results, series_content_key
from hounsfield.synth.ct import generate_ct

T0 = dt.datetime(2024, 5, 6, 7, 0, tzinfo=dt.timezone.utc)
MODEL = AIModel("nodules", "3", "2.25.314159265358979323846264338327950288")


def _dest(profile: str, **kw) -> dict:
    return {"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 11112,
            "profile": profile, **kw}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("supersede")
    settings = load_settings(data_dir=tmp / "var", profile="demo", fsync=False, export={
        "destinations": {"iocm-pacs": _dest("ai-ready", supersede="iocm"),
                         "iocm-legacy": _dest("legacy", supersede="iocm"),
                         "plain": _dest("all")}})
    archive = Archive.open(settings)
    ct = generate_ct("jingdong", 5, shape=(40, 128, 128), nodules=2)
    vol = volume_from_datasets(ct.datasets)
    key = series_content_key([(d.SOPInstanceUID, f"h{i}") for i, d in enumerate(ct.datasets)])
    found = [SimpleNamespace(x_mm=t.coordX, y_mm=t.coordY, z_mm=t.coordZ,
                             diameter_mm=t.diameter_mm, probability=0.8) for t in ct.truth]
    rs = build_results(ct.datasets, vol, found, MODEL, input_key=key, created=T0.replace(tzinfo=None))
    parts = []
    for o in rs.objects:
        buf = io.BytesIO()
        o.dataset.save_as(buf, enforce_file_format=True)
        parts.append(parse_part10(buf.getvalue()))
    assert all(x.status == "stored" for x in store_instances(archive, parts, source="test"))
    refs = [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid,
             "series_instance_uid": o.series_instance_uid, "sop_class_uid": o.sop_class_uid}
            for o in rs.objects]
    common = dict(study_instance_uid=ct.study_uid, series_instance_uid=ct.series_uid,
                  rule="chest", profile="all", destinations=["iocm-pacs", "plain"],
                  device_uid=MODEL.device_uid, log=[], findings=[], timings={})
    old = AiJob(id="job-old", idempotency_key="old-key", workflow_id="job-old", state="done",
                model_version="nodules@3", result_uids=refs, created_at=T0, **common)
    other_rule = AiJob(id="job-other", idempotency_key="other-key", workflow_id="job-other",
                       state="done", model_version="nodules@3", created_at=T0,
                       result_uids=[{**refs[0], "sop_instance_uid": "2.25.9"}],
                       **{**common, "rule": "other"})
    new = AiJob(id="job-new", idempotency_key="new-key", workflow_id="job-new",
                state="exporting", model_version="nodules@3", created_at=T0 + dt.timedelta(hours=1),
                result_uids=[], **common)
    by_kind = {o.kind: o.sop_instance_uid for o in rs.objects}
    with archive.write_session() as s, s.begin():
        s.add_all([old, other_rule, new])
        # iocm-pacs acknowledged the SEG (success) and the SR (warning); the SC failed there
        s.add_all([Delivery(operation="C-STORE", destination="iocm-pacs", status=0,
                            sop_instance_uid=by_kind["SEG"], study_instance_uid=ct.study_uid),
                   Delivery(operation="C-STORE", destination="iocm-pacs", status=0xB000,
                            sop_instance_uid=by_kind["SR"], study_instance_uid=ct.study_uid),
                   Delivery(operation="C-STORE", destination="iocm-pacs", status=0xA700,
                            sop_instance_uid=by_kind["SC"], study_instance_uid=ct.study_uid)]
                  + [Delivery(operation="C-STORE", destination="plain", status=0,
                              sop_instance_uid=u, study_instance_uid=ct.study_uid)
                     for u in by_kind.values()])
    yield archive, rs, by_kind, ct
    archive.close()


def _job(archive, job_id: str) -> AiJob:  # noqa: ANN001
    from hounsfield.deploy.jobs import get_job

    return get_job(archive, job_id)


def test_predecessors_are_the_replaced_jobs_results(setup):
    archive, rs, by_kind, ct = setup
    refs = predecessor_refs(archive, _job(archive, "job-new"))
    assert {r["sop_instance_uid"] for r in refs} == {o.sop_instance_uid for o in rs.objects}
    assert all(r["study_instance_uid"] == ct.study_uid for r in refs)  # not the other rule's


def test_rejection_note_withdraws_only_what_the_destination_acknowledged(setup):
    archive, rs, by_kind, ct = setup
    new = _job(archive, "job-new")
    note = rejection_for(archive, new, "iocm-pacs")
    assert note["kind"] == REJECTION and note["destination"] == "iocm-pacs"
    assert note["rejects"] == sorted([by_kind["SEG"], by_kind["SR"]])  # not the failed SC
    from sqlalchemy import select

    from hounsfield.archive.models import Instance

    with archive.session() as s:
        key = s.scalars(select(Instance.blob_key).where(
            Instance.sop_instance_uid == note["sop_instance_uid"])).one()
    ds = pydicom.dcmread(io.BytesIO(archive.blobs.read(key)))  # stored in our archive
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert ds.StudyInstanceUID == ct.study_uid
    listed = {str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
              for it in ds.ContentSequence if it.ValueType in ("IMAGE", "COMPOSITE")}
    assert listed == set(note["rejects"])
    # a retried step builds the same note (derived UIDs; the archive keeps one copy)
    assert rejection_for(archive, new, "iocm-pacs") == note


def test_no_note_for_version_destinations_or_nothing_acknowledged(setup):
    archive, *_ = setup
    new = _job(archive, "job-new")
    assert rejection_for(archive, new, "plain") is None          # supersede = "version"
    assert rejection_for(archive, new, "iocm-legacy") is None    # acknowledged nothing
