"""MPPS units: the state machine of PS3.4 F.7.2 (pure functions), the durable N-CREATE / N-SET
on a real archive, the trigger's pass (complete -> fired once, overdue -> mismatch with the
missing UIDs, late arrival, back catalogue, DISCONTINUED held back from the quiet timer), and
the web doors (/api/mpps, /mpps) on the real app."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.archive.models import utcnow
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.deploy.models import RouteEvent
from hounsfield.deploy.mpps_trigger import hold_stable, route_mpps
from hounsfield.deploy.pipeline import Trigger
from hounsfield.errors import ConfigurationError
from hounsfield.ingest import mpps
from tests.mpps_modality import create_attrs, final_mods
from tests.web_data import ct_series, to_bytes

SOURCE = dict(calling_ae="CT1", source="CT1@127.0.0.1")


def _series_item(cts: list[Dataset], extra: tuple[str, ...] = ()) -> list[Dataset]:
    item = Dataset()
    item.SeriesInstanceUID = str(cts[0].SeriesInstanceUID)
    refs = [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in cts]
    refs += [("1.2.840.10008.5.1.4.1.1.2", u) for u in extra]
    item.ReferencedImageSequence = []
    for cls, sop in refs:
        r = Dataset()
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = cls, sop
        item.ReferencedImageSequence.append(r)
    return [item]


# -- the state machine -------------------------------------------------------------------------
def test_check_create_type1_state_and_study_uids() -> None:
    study = generate_uid()
    assert mpps.check_create(create_attrs(study)) is None
    a = mpps.check_create(create_attrs(study, state="DISCONTINUED"))
    assert a.status == mpps.INVALID_ATTRIBUTE_VALUE and "IN PROGRESS" in a.comment
    for kw in mpps.CREATE_TYPE1:
        ds = create_attrs(study)
        delattr(ds, kw)
        a = mpps.check_create(ds)
        assert a.status == mpps.MISSING_ATTRIBUTE and kw in a.comment
    ds = create_attrs(study)
    ds.ScheduledStepAttributesSequence = []
    assert mpps.check_create(ds).status == mpps.MISSING_ATTRIBUTE_VALUE
    ds = create_attrs(study)
    ds.ScheduledStepAttributesSequence[0].StudyInstanceUID = ""
    assert mpps.check_create(ds).status == mpps.MISSING_ATTRIBUTE_VALUE
    ds = create_attrs(study)
    second = Dataset()
    second.StudyInstanceUID = generate_uid()
    ds.ScheduledStepAttributesSequence.append(second)
    ds.ScheduledStepAttributesSequence.append(ds.ScheduledStepAttributesSequence[0])
    assert mpps.study_uids(ds) == [study, second.StudyInstanceUID]


def test_check_set_transitions() -> None:
    for state in mpps.STATES:
        mods = Dataset()
        mods.PerformedProcedureStepStatus = state
        assert mpps.check_set(mpps.IN_PROGRESS, mods) is None
        for final in mpps.FINAL:
            a = mpps.check_set(final, mods)
            assert (a.status, a.comment, a.error_id) == (
                0x0110, "Performed Procedure Step Object may no longer be updated", 0xA710)
    mods = Dataset()
    mods.PerformedProcedureStepStatus = "SCHEDULED"
    assert mpps.check_set(mpps.IN_PROGRESS, mods).status == mpps.INVALID_ATTRIBUTE_VALUE
    assert mpps.check_set(mpps.IN_PROGRESS, Dataset()) is None  # no state change: an update


def test_merge_final_and_performed_instances() -> None:
    stored = create_attrs(generate_uid())
    cts = ct_series(3, 16, seed="mpps-merge")
    mods = final_mods("COMPLETED", _series_item(cts, extra=("1.2.3.4",)))
    mods.PatientID = "OTHER"
    new, ignored = mpps.merge(stored, mods)
    assert ignored == ["PatientID"] and new.PatientID == "PIPE1"
    assert new.PerformedProcedureStepStatus == "COMPLETED"
    assert stored.PerformedProcedureStepStatus == "IN PROGRESS"  # the stored one untouched
    assert mpps.check_final(new) is None
    refs = mpps.performed_instances(new)
    assert [r[1] for r in refs] == [str(d.SOPInstanceUID) for d in cts] + ["1.2.3.4"]
    assert {r[0] for r in refs} == {str(cts[0].SeriesInstanceUID)}
    bare, _ = mpps.merge(stored, final_mods("COMPLETED"))
    assert mpps.check_final(bare).status == mpps.MISSING_ATTRIBUTE
    no_uid = final_mods("COMPLETED", _series_item(cts))
    del no_uid.PerformedSeriesSequence[0].SeriesInstanceUID
    assert "SeriesInstanceUID" in mpps.check_final(mpps.merge(stored, no_uid)[0]).comment
    # DISCONTINUED needs no series (nothing may have been acquired)
    assert mpps.check_final(mpps.merge(stored, final_mods("DISCONTINUED"))[0]) is None


def test_mpps_settings() -> None:
    s = load_settings(mpps={"mismatch_wait_s": 5})
    assert s.mpps.mismatch_wait_s == 5 and s.mpps.late_arrival_h == 168
    with pytest.raises(ConfigurationError, match="mismatch_wait_s"):
        load_settings(mpps={"mismatch_wait_s": 0})


# -- durable requests and the trigger on a real archive ----------------------------------------
@pytest.fixture()
def archive(tmp_path):
    a = Archive.open(load_settings(data_dir=tmp_path / "var", profile="demo",
                                   mpps={"mismatch_wait_s": 60}))
    yield a
    a.close()


def _store(archive, cts) -> None:  # noqa: ANN001
    out = store_instances(archive, [parse_part10(to_bytes(d)) for d in cts], source="test")
    assert all(o.status == "stored" for o in out)


def _complete(archive, study: str, series: list[Dataset],  # noqa: ANN001
              state: str = "COMPLETED") -> str:
    uid = generate_uid()
    assert mpps.n_create(archive, create_attrs(study), uid, **SOURCE).ok
    assert mpps.n_set(archive, uid, final_mods(state, series), **SOURCE).ok
    return uid


def test_trigger_waits_for_every_instance_then_fires_once(archive) -> None:  # noqa: ANN001
    cts = ct_series(4, 16, seed="mpps-fire")
    study = str(cts[0].StudyInstanceUID)
    uid = _complete(archive, study, _series_item(cts))  # before any image arrived
    enabled = utcnow() - timedelta(hours=1)
    assert route_mpps(archive, enabled=enabled) == []
    assert mpps.get_mpps(archive, uid).trigger_state == "waiting"
    _store(archive, cts[:3])
    assert route_mpps(archive, enabled=enabled) == []  # one still missing
    _store(archive, cts[3:])
    # no rules file: routed, recorded, no job
    assert route_mpps(archive, enabled=enabled) == [(uid, "no-rule")]
    row = mpps.get_mpps(archive, uid)
    assert (row.trigger_state, row.route_outcome, row.n_missing) == ("fired", "no-rule", 0)
    assert route_mpps(archive, enabled=enabled) == []  # once
    with archive.session() as s:
        (ev,) = s.scalars(select(RouteEvent).where(RouteEvent.trigger_key == f"mpps:{uid}"))
    assert (ev.trigger, ev.actor, ev.study_instance_uid) == ("mpps", "CT1", study)


def test_mismatch_after_the_wait_then_late_arrival(archive) -> None:  # noqa: ANN001
    cts = ct_series(5, 16, seed="mpps-mismatch")
    study = str(cts[0].StudyInstanceUID)
    _store(archive, cts[:2])
    uid = _complete(archive, study, _series_item(cts))
    enabled = utcnow() - timedelta(hours=1)
    assert route_mpps(archive, enabled=enabled, now=utcnow() + timedelta(seconds=30)) == []
    later = utcnow() + timedelta(seconds=61)
    assert route_mpps(archive, enabled=enabled, now=later) == [(uid, "mismatch")]
    row = mpps.get_mpps(archive, uid)
    assert row.trigger_state == "mismatch" and row.n_missing == 3
    assert row.missing == [str(d.SOPInstanceUID) for d in cts[2:]]
    assert route_mpps(archive, enabled=enabled, now=later) == []  # nothing changed: quiet
    _store(archive, cts[2:4])
    assert route_mpps(archive, enabled=enabled, now=later) == [(uid, "mismatch")]
    assert mpps.get_mpps(archive, uid).missing == [str(cts[4].SOPInstanceUID)]
    _store(archive, cts[4:])
    assert route_mpps(archive, enabled=enabled, now=later) == [(uid, "no-rule")]
    row = mpps.get_mpps(archive, uid)
    assert row.trigger_state == "fired" and row.missing == [] and "arrived" in row.note
    # a step naming no instance, about a study that never arrives: a mismatch naming the study
    lost = generate_uid()
    empty = Dataset()
    empty.SeriesInstanceUID = generate_uid()
    empty.ReferencedImageSequence = []
    uid2 = _complete(archive, lost, [empty])
    assert route_mpps(archive, enabled=enabled, now=later) == [(uid2, "mismatch")]
    assert mpps.get_mpps(archive, uid2).missing == [f"study {lost}"]


def test_back_catalogue_and_discontinued(archive) -> None:  # noqa: ANN001
    old = ct_series(2, 16, seed="mpps-old")
    _store(archive, old)
    old_uid = _complete(archive, str(old[0].StudyInstanceUID), _series_item(old))
    assert route_mpps(archive, enabled=utcnow() + timedelta(minutes=1)) == \
        [(old_uid, "back-catalogue")]
    stopped = ct_series(3, 16, seed="mpps-stopped")
    _store(archive, stopped)
    study = str(stopped[0].StudyInstanceUID)
    d_uid = _complete(archive, study, _series_item(stopped), state="DISCONTINUED")
    assert mpps.get_mpps(archive, d_uid).trigger_state == "discontinued"
    assert route_mpps(archive, enabled=utcnow() - timedelta(hours=1)) == []
    fired = hold_stable(archive, Trigger(study, "stable", key="stable:test-1"))
    assert fired.outcome == "discontinued"
    with archive.session() as s:
        ev = s.scalars(select(RouteEvent).where(RouteEvent.trigger_key == "stable:test-1")).one()
    assert ev.outcome == "discontinued" and "DISCONTINUED" in ev.log[0]
    # the other study is not held back; nor is this one once a repeat COMPLETED
    assert hold_stable(archive, Trigger(str(old[0].StudyInstanceUID), "stable")) is None
    _complete(archive, study, _series_item(stopped))
    assert hold_stable(archive, Trigger(study, "stable")) is None


# -- the web doors -----------------------------------------------------------------------------
def test_api_and_console_page(archive) -> None:  # noqa: ANN001
    from hounsfield.web import auth
    from hounsfield.web.app import create_app

    cts = ct_series(3, 16, seed="mpps-web")
    _store(archive, cts[:1])
    uid = _complete(archive, str(cts[0].StudyInstanceUID), _series_item(cts))
    route_mpps(archive, enabled=utcnow() - timedelta(hours=1),
               now=utcnow() + timedelta(seconds=120))
    auth.create_user(archive, "rad", "radiologist", None)
    rad = {"Authorization": f"Bearer {auth.issue_token(archive, 'rad', days=1)[0]}"}
    with TestClient(create_app(archive.settings, archive)) as c:
        assert c.get("/api/mpps").status_code == 401
        (got,) = c.get("/api/mpps", headers=rad).json()
        assert got["sop_instance_uid"] == uid and got["trigger_state"] == "mismatch"
        assert got["n_missing"] == 2 and len(got["missing"]) == 2
        assert c.get("/api/mpps?trigger_state=fired", headers=rad).json() == []
        one = c.get(f"/api/mpps/{uid}", headers=rad).json()
        assert one["dataset"]["00400252"]["Value"] == ["COMPLETED"]
        r = c.get(f"/api/mpps/{generate_uid()}", headers=rad)
        assert r.status_code == 404 and "no MPPS" in r.json()["error"]
        page = c.get("/mpps", headers=rad)
        assert page.status_code == 200 and "2 missing" in page.text
        assert 'href="/mpps"' in page.text and "mismatch-summary" in page.text


def test_a_flagged_mismatch_is_not_rewritten_every_pass(archive) -> None:  # noqa: ANN001
    lost = generate_uid()
    empty = Dataset()
    empty.SeriesInstanceUID = generate_uid()
    empty.ReferencedImageSequence = []
    uid = _complete(archive, lost, [empty])
    enabled, later = utcnow() - timedelta(hours=1), utcnow() + timedelta(seconds=61)
    assert route_mpps(archive, enabled=enabled, now=later) == [(uid, "mismatch")]
    before = mpps.get_mpps(archive, uid).updated_at
    assert route_mpps(archive, enabled=enabled, now=later) == []
    assert mpps.get_mpps(archive, uid).updated_at == before


def test_cli_mpps_list_and_show(archive) -> None:  # noqa: ANN001
    import json

    from typer.testing import CliRunner

    from hounsfield.cli.main import app

    cts = ct_series(2, 16, seed="mpps-cli")
    uid = _complete(archive, str(cts[0].StudyInstanceUID), _series_item(cts))
    base = ["--data-dir", str(archive.settings.data_dir), "--profile", "demo", "mpps"]
    runner = CliRunner()
    r = runner.invoke(app, [*base, "list", "--json"])
    assert r.exit_code == 0, r.output
    (got,) = json.loads(r.output)
    assert (got["sop_instance_uid"], got["trigger_state"], got["n_referenced"]) == \
        (uid, "waiting", 2)
    r = runner.invoke(app, [*base, "list", "--state", "DISCONTINUED", "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == []
    r = runner.invoke(app, [*base, "list"])
    assert r.exit_code == 0 and "waiting" in r.output
    r = runner.invoke(app, [*base, "show", uid])
    assert r.exit_code == 0 and json.loads(r.output)["dataset"]["00400252"]["Value"] == \
        ["COMPLETED"]
    r = runner.invoke(app, [*base, "show", generate_uid()])
    assert r.exit_code == 2 and "no MPPS" in r.output
