"""The UPS state machine (PS3.4 Table CC.1.1-2) as data, and the manager that enforces it:
every cell of the table checked against a transcription of the standard, and every request
driven against a real SQLite archive from each state — a refusal changes nothing."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from hounsfield.archive import Archive
from hounsfield.config import load_settings
from hounsfield.deploy import ups
from hounsfield.deploy.models import UpsEvent, UpsWorkitem
from tests.ups_helpers import state_body, workitem

S, P, C, X = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"

#: PS3.4 Table CC.1.1-2, columns SCHEDULED, IN PROGRESS, COMPLETED, CANCELED (the "no such
#: instance" column is C307 everywhere and tested below)
STANDARD = {
    (P, True): ("change", "C302", "C300", "C300"),
    (P, False): ("C301", "C301", "C301", "C301"),
    (S, True): ("C303", "C303", "C303", "C303"),
    (S, False): ("C303", "C303", "C303", "C303"),
    (C, True): ("C310", "final", "B306", "C300"),
    (C, False): ("C301", "C301", "C301", "C301"),
    (X, True): ("C310", "final", "C300", "B304"),
    (X, False): ("C301", "C301", "C301", "C301"),
}
CANCEL_STANDARD = ("cancel", "notify", "C311", "B304")


def _cell(verdict: str, code: int) -> str:
    return verdict if verdict in ("change", "final", "cancel", "notify") else f"{code:04X}"


@pytest.mark.parametrize("row", sorted(STANDARD))
def test_transition_table_is_the_standards(row):  # noqa: ANN001
    requested, ok = row
    got = tuple(_cell(*ups.transition(requested, state, ok)) for state in (S, P, C, X))
    assert got == STANDARD[row]


def test_request_cancel_row_is_the_standards():
    assert tuple(_cell(*ups.REQUEST_CANCEL[s]) for s in (S, P, C, X)) == CANCEL_STANDARD


def test_every_refusal_has_an_http_status_and_a_meaning():
    for row in ups.TRANSITIONS.values():
        for verdict, code in row.values():
            if verdict == "error":
                assert code in ups.HTTP_STATUS and code in ups.STATUS_MEANING
    assert ups.HTTP_STATUS[0xC301] == 400 and ups.HTTP_STATUS[0xC307] == 404
    assert ups.HTTP_STATUS[0xC302] == 409 and ups.HTTP_STATUS[0xC311] == 409


@pytest.fixture()
def archive(tmp_path):  # noqa: ANN001
    a = Archive.open(load_settings(data_dir=tmp_path / "var", profile="demo"))
    yield a
    a.close()


def _performed() -> dict:
    item = Dataset()
    item.PerformedProcedureStepStartDateTime = "20261202081000"
    item.OutputInformationSequence = []
    ds = Dataset()
    ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
    return ds.to_json_dict()


def _in_state(archive, state: str) -> tuple[str, str]:  # noqa: ANN001
    """A workitem brought to ``state`` through the manager; (uid, its Transaction UID)."""
    uid, ds = workitem(generate_uid())
    ups.create(archive, [ds], uid=uid)
    tuid = generate_uid()
    if state == S:
        return uid, tuid
    ups.change_state(archive, uid, state_body(P, tuid))
    if state == C:
        ups.update(archive, uid, _performed(), transaction_uid=tuid)
    if state in (C, X):
        ups.change_state(archive, uid, state_body(state, tuid))
    return uid, tuid


def _snapshot(archive, uid: str):  # noqa: ANN001, ANN202
    with archive.session() as s:
        row = s.get(UpsWorkitem, uid)
        n = s.scalar(select(func.count()).select_from(UpsEvent))
        return row.state, row.transaction_uid, dict(row.dataset), n


@pytest.mark.parametrize("current", [S, P, C, X])
@pytest.mark.parametrize("requested", [S, P, C, X])
@pytest.mark.parametrize("tuid_kind", ["right", "wrong", "none"])
def test_manager_enforces_every_cell(archive, current, requested, tuid_kind):  # noqa: ANN001
    uid, tuid = _in_state(archive, current)
    ups.subscribe(archive, uid, "WATCH")
    if requested == C and current == P:
        ups.update(archive, uid, _performed(), transaction_uid=tuid)
    given = {"right": tuid, "wrong": generate_uid(), "none": None}[tuid_kind]
    ok = bool(given) and (current == S or given == tuid)
    verdict, code = ups.transition(requested, current, ok)
    before = _snapshot(archive, uid)
    if verdict == "error":
        with pytest.raises(ups.UpsRefused) as err:
            ups.change_state(archive, uid, state_body(requested, given))
        assert err.value.dicom_status == code
        assert err.value.http_status == ups.HTTP_STATUS[code]
        assert err.value.warning
        assert _snapshot(archive, uid) == before          # nothing half-applied
    elif verdict == "warn":
        answer = ups.change_state(archive, uid, state_body(requested, given))
        assert answer.warnings and answer.warnings[0][0] == code
        assert _snapshot(archive, uid) == before
    else:
        answer = ups.change_state(archive, uid, state_body(requested, given))
        state, lock, ds, n = _snapshot(archive, uid)
        assert state == requested == answer.state and n == before[3] + 1
        assert ups.value(ds, "ProcedureStepState") == requested
        assert ups.tag("TransactionUID") not in ds and lock == (given if current == S else tuid)


def test_unknown_workitem_is_c307_for_every_request(archive):  # noqa: ANN001
    for call in (lambda: ups.change_state(archive, "1.2.3", state_body(P, generate_uid())),
                 lambda: ups.update(archive, "1.2.3", _performed(), transaction_uid=None),
                 lambda: ups.request_cancel(archive, "1.2.3"),
                 lambda: ups.get(archive, "1.2.3"),
                 lambda: ups.subscribe(archive, "1.2.3", "AE")):
        with pytest.raises(ups.UpsRefused) as err:
            call()
        assert err.value.dicom_status == 0xC307 and err.value.http_status == 404


def test_completed_needs_final_state_requirements(archive):  # noqa: ANN001
    uid, tuid = _in_state(archive, P)
    before = _snapshot(archive, uid)
    with pytest.raises(ups.UpsRefused) as err:
        ups.change_state(archive, uid, state_body(C, tuid))
    assert err.value.dicom_status == 0xC304 and _snapshot(archive, uid) == before


def test_request_cancel_from_each_state(archive):  # noqa: ANN001
    uid, _ = _in_state(archive, S)
    assert ups.request_cancel(archive, uid).state == X
    uid, _ = _in_state(archive, P)
    assert ups.request_cancel(archive, uid, actor="ris").state == P
    assert ups.get_row(archive, uid).cancel_requested
    uid, _ = _in_state(archive, C)
    with pytest.raises(ups.UpsRefused) as err:
        ups.request_cancel(archive, uid)
    assert err.value.dicom_status == 0xC311 and err.value.http_status == 409
    uid, _ = _in_state(archive, X)
    assert ups.request_cancel(archive, uid).warnings[0][0] == 0xB304


def test_search_matching(archive):  # noqa: ANN001
    a, ds_a = workitem(generate_uid(), patient="DOE^JANE", priority="HIGH")
    b, ds_b = workitem(generate_uid(), patient="ROE^RICHARD", priority="LOW")
    ups.create(archive, [ds_a], uid=a)
    ups.create(archive, [ds_b], uid=b)

    def uids(**kw) -> list[str]:  # noqa: ANN003
        return [ups.value(d, "SOPInstanceUID") for d in ups.search(archive, list(kw.items()))]

    assert uids(PatientName="doe*") == [a]
    assert uids(ScheduledProcedureStepPriority="LOW") == [b]
    assert uids(SOPInstanceUID=f"{a},{b}") == [a, b]
    assert uids(ScheduledProcedureStepStartDateTime="20260101-20261231") == [a, b]
    assert uids(**{"ScheduledWorkitemCodeSequence.CodeValue": "110004"}) == [a, b]
    assert uids(**{"ScheduledWorkitemCodeSequence.CodeValue": "999"}) == []
    with pytest.raises(ups.UpsRefused):
        uids(NotAnAttribute="x")
