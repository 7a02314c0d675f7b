"""UPS-RS (PS3.18 §11, PS3.4 Annex CC) against the real server, driven by clients that are not
ours: plain HTTP (``requests``; dicomweb-client has no UPS-RS) for the transactions and the
``websockets`` client for the event channel.  Every state-machine violation is refused with
the standard's HTTP status, DICOM status and Warning text; bad input never stops the server."""

from __future__ import annotations

import json

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.ups_helpers import FILTERED, GLOBAL, UpsClient, tag_value, workitem
from tests.web_fixtures import admin_token, live  # noqa: F401

pytestmark = pytest.mark.timeout(120)

STATE, TUID, EVENT, AFFECTED = "00741000", "00081195", "00001002", "00001000"


@pytest.fixture(scope="module")
def ups(live, admin_token):  # noqa: ANN001, F811
    return UpsClient(live.dicomweb, admin_token)


def _channel(url: str, token: str):  # noqa: ANN202
    return connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                   open_timeout=10)


def _events(ws, n: int, timeout: float = 10.0) -> list[dict]:  # noqa: ANN001
    return [json.loads(ws.recv(timeout=timeout)) for _ in range(n)]


def _refused(r, http: int, status: str, warning: str | None = None) -> dict:  # noqa: ANN001
    assert r.status_code == http, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == status, body
    assert body["error"] and body["meaning"]
    if warning is not None:
        assert r.headers["Warning"].startswith("299 ") and warning in r.headers["Warning"], \
            r.headers.get("Warning")
    return body


def _performed(outputs: list[Dataset] | None = None) -> dict:
    item = Dataset()
    item.PerformedProcedureStepStartDateTime = "20261202081000"
    item.OutputInformationSequence = outputs or []
    ds = Dataset()
    ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
    return ds.to_json_dict()


def test_round_trip_with_events_and_every_violation(ups, live, admin_token):  # noqa: ANN001, F811
    r = ups.subscribe(GLOBAL, "WATCHER", deletionlock="true")
    assert r.status_code == 201, r.text
    channel = r.headers["Content-Location"]
    assert channel.startswith("ws://") and channel.endswith("/subscribers/WATCHER")
    with _channel(channel, admin_token) as ws:
        uid, ds = workitem(generate_uid(), patient="ROUND^TRIP")
        r = ups.create(uid, ds)
        assert r.status_code == 201, r.text
        assert r.headers["Location"].endswith(f"/dicom-web/workitems/{uid}")
        (ev,) = _events(ws, 1)
        assert tag_value(ev, AFFECTED) == uid and tag_value(ev, EVENT) == 1
        assert tag_value(ev, STATE) == "SCHEDULED"

        r = ups.get(uid)
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/dicom+json")
        (got,) = r.json()
        assert tag_value(got, STATE) == "SCHEDULED" and TUID not in got
        r = ups.search(ProcedureStepState="SCHEDULED", PatientName="ROUND*")
        assert r.status_code == 200 and [tag_value(x, "00080018") for x in r.json()] == [uid]
        assert ups.search(PatientName="NOBODY*").status_code == 204

        # claim it: IN PROGRESS with our Transaction UID
        tuid = generate_uid()
        _refused(ups.state(uid, "IN PROGRESS", None), 400, "C301", "Transaction UID is missing")
        r = ups.state(uid, "IN PROGRESS", tuid)
        assert r.status_code == 200, r.text
        assert tag_value(_events(ws, 1)[0], STATE) == "IN PROGRESS"
        assert TUID not in ups.get(uid).json()[0]
        # a second performer cannot take it, the first cannot take it twice
        _refused(ups.state(uid, "IN PROGRESS", generate_uid()), 400, "C301", "incorrect")
        _refused(ups.state(uid, "IN PROGRESS", tuid), 409, "C302", "inconsistent")

        # progress: only with the Transaction UID
        progress = Dataset()
        p = Dataset()
        p.ProcedureStepProgress = 50
        p.ProcedureStepProgressDescription = "half way"
        progress.ProcedureStepProgressInformationSequence = [p]
        _refused(ups.update(uid, progress.to_json_dict()), 400, "C301", "missing")
        _refused(ups.update(uid, progress.to_json_dict(), generate_uid()), 400, "C301",
                 "incorrect")
        r = ups.update(uid, progress.to_json_dict(), tuid)
        assert r.status_code == 200, r.text
        (ev,) = _events(ws, 1)
        assert tag_value(ev, EVENT) == 3
        assert tag_value(ev, "00741002")["00741004"]["Value"] == [50]

        # COMPLETED needs the Final State requirements and the Transaction UID
        _refused(ups.state(uid, "COMPLETED", tuid), 409, "C304", "inconsistent")
        _refused(ups.state(uid, "COMPLETED", None), 400, "C301", "missing")
        _refused(ups.state(uid, "COMPLETED", generate_uid()), 400, "C301", "incorrect")
        assert ups.update(uid, _performed(), tuid).status_code == 200
        r = ups.state(uid, "COMPLETED", tuid)
        assert r.status_code == 200, r.text
        assert tag_value(_events(ws, 1)[0], STATE) == "COMPLETED"

        # final: immutable
        r = ups.state(uid, "COMPLETED", tuid)
        assert r.status_code == 200 and "already in the requested state of COMPLETED" in \
            r.headers["Warning"]
        _refused(ups.state(uid, "CANCELED", tuid), 409, "C300")
        _refused(ups.update(uid, progress.to_json_dict(), tuid), 400, "C300")
        _refused(ups.cancel(uid), 409, "C311")
        _refused(ups.state(uid, "SCHEDULED", tuid), 400, "C303")
        got = ups.get(uid).json()[0]
        assert tag_value(got, STATE) == "COMPLETED"
        assert tag_value(got, "00741216")["00404051"]["Value"]  # end DateTime filled in
    assert ups.unsubscribe(GLOBAL, "WATCHER").status_code == 200


def test_scheduled_violations_and_cancel_request(ups, live, admin_token):  # noqa: ANN001, F811
    uid, ds = workitem(generate_uid())
    assert ups.create(None, ds).status_code == 201          # the UID from the data set
    _refused(ups.create(uid, ds), 409, "0111")               # created once
    _refused(ups.state(uid, "COMPLETED", generate_uid()), 409, "C310", "inconsistent")
    _refused(ups.state(uid, "CANCELED", generate_uid()), 409, "C310")
    _refused(ups.state(uid, "COMPLETED", None), 400, "C301", "missing")
    r = ups.subscribe(uid, "CANCELWATCH")
    assert r.status_code == 201
    with _channel(r.headers["Content-Location"], admin_token) as ws:
        assert tag_value(_events(ws, 1)[0], STATE) == "SCHEDULED"   # initial state report
        r = ups.cancel(uid, "patient left")
        assert r.status_code == 202, r.text
        states = [tag_value(e, STATE) for e in _events(ws, 2)]
        assert states == ["IN PROGRESS", "CANCELED"]
    got = ups.get(uid).json()[0]
    assert tag_value(got, STATE) == "CANCELED"
    item = tag_value(got, "00741002")
    assert item["00741238"]["Value"] == ["patient left"] and item["00404052"]["Value"]
    r = ups.cancel(uid)
    assert r.status_code == 202 and "already in the requested state of CANCELED" in \
        r.headers["Warning"]
    _refused(ups.state(uid, "COMPLETED", generate_uid()), 400, "C301")
    # an update on a SCHEDULED workitem needs no Transaction UID
    uid2, ds2 = workitem(generate_uid())
    assert ups.create(uid2, ds2).status_code == 201
    pri = Dataset()
    pri.ScheduledProcedureStepPriority = "HIGH"
    assert ups.update(uid2, pri.to_json_dict()).status_code == 200
    assert tag_value(ups.get(uid2).json()[0], "00741200") == "HIGH"
    # cancel request on IN PROGRESS (not ours to perform): accepted, the performer decides
    tuid = generate_uid()
    assert ups.state(uid2, "IN PROGRESS", tuid).status_code == 200
    assert ups.cancel(uid2, "not needed").status_code == 202
    assert tag_value(ups.get(uid2).json()[0], STATE) == "IN PROGRESS"
    assert ups.state(uid2, "CANCELED", tuid).status_code == 200


def test_create_refusals(ups):  # noqa: ANN001
    uid, ds = workitem(generate_uid())
    bad = dict(ds)
    bad[STATE] = {"vr": "CS", "Value": ["IN PROGRESS"]}
    _refused(ups.create(uid, bad), 400, "C309")
    bad = dict(ds)
    bad[TUID] = {"vr": "UI", "Value": [generate_uid()]}
    _refused(ups.create(uid, bad), 400, "0106")
    bad = {k: v for k, v in ds.items() if k != "00741204"}  # no Procedure Step Label
    _refused(ups.create(uid, bad), 400, "0120")
    bad = dict(ds)
    bad["00741200"] = {"vr": "CS", "Value": ["URGENT"]}
    _refused(ups.create(uid, bad), 400, "0106")
    _refused(ups.create(generate_uid(), ds), 400, "0106")  # query UID differs from the data set
    assert ups.get(uid).status_code == 404                   # nothing half-created
    # modified by us: Warning 299
    lean = {k: v for k, v in ds.items() if k not in ("00080016", "00741202")}
    r = ups.create(uid, lean)
    assert r.status_code == 201 and "created with modifications" in r.headers["Warning"]


def test_filtered_and_suspended_subscriptions_and_offline_delivery(ups, live,  # noqa: ANN001, F811
                                                                   admin_token):  # noqa: F811
    r = ups.subscribe(FILTERED, "HIGHONLY", filter="ScheduledProcedureStepPriority=HIGH")
    assert r.status_code == 201, r.text
    high_channel = r.headers["Content-Location"]
    assert ups.subscribe(GLOBAL, "ALLITEMS").status_code == 201
    low_uid, low = workitem(generate_uid(), priority="LOW")
    high_uid, high = workitem(generate_uid(), priority="HIGH")
    assert ups.create(low_uid, low).status_code == 201
    assert ups.create(high_uid, high).status_code == 201
    # HIGHONLY was not connected: its reports waited in the database
    with _channel(high_channel, admin_token) as ws:
        evs = _events(ws, 1)
        assert [tag_value(e, AFFECTED) for e in evs] == [high_uid]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)
    # suspend ALLITEMS: new workitems are not subscribed, existing ones still report
    assert ups.suspend("ALLITEMS").status_code == 200
    later_uid, later = workitem(generate_uid())
    assert ups.create(later_uid, later).status_code == 201
    tuid = generate_uid()
    assert ups.state(low_uid, "IN PROGRESS", tuid).status_code == 200
    url = high_channel.replace("HIGHONLY", "ALLITEMS")
    with _channel(url, admin_token) as ws:
        seen = []
        while True:
            try:
                seen.append(json.loads(ws.recv(timeout=1.5)))
            except TimeoutError:
                break
    pairs = [(tag_value(e, AFFECTED), tag_value(e, STATE)) for e in seen]
    assert (low_uid, "IN PROGRESS") in pairs
    assert all(u != later_uid for u, _ in pairs)
    assert ups.unsubscribe(GLOBAL, "ALLITEMS").status_code == 200
    _refused(ups.unsubscribe(GLOBAL, "ALLITEMS"), 404, "C307")
    _refused(ups.unsubscribe(low_uid, "ALLITEMS"), 404, "C307")  # its workitem ones went too
    _refused(ups.suspend("NOSUCHAE"), 404, "C307")


def test_bad_input_keeps_the_server_serving(ups, live, admin_token):  # noqa: ANN001, F811
    import requests

    h = {"Authorization": f"Bearer {admin_token}"}
    base = live.dicomweb + "/workitems"
    r = requests.post(base, data=b"{not json", timeout=30,
                      headers={**h, "Content-Type": "application/dicom+json"})
    _refused(r, 400, "0106")
    r = requests.post(base, data=b"<xml/>", timeout=30,
                      headers={**h, "Content-Type": "application/dicom+xml"})
    assert r.status_code == 415 and "application/dicom+json" in r.json()["error"]
    r = requests.post(base, data=json.dumps([{"00741000": "SCHEDULED"}]), timeout=30,
                      headers={**h, "Content-Type": "application/dicom+json"})
    _refused(r, 400, "0106")
    r = requests.post(base, data=json.dumps([{}, {}]), timeout=30,
                      headers={**h, "Content-Type": "application/dicom+json"})
    _refused(r, 400, "0106")
    _refused(ups.get("1.2.3.999"), 404, "C307")
    _refused(ups.state("1.2.3.999", "IN PROGRESS", generate_uid()), 404, "C307")
    _refused(ups.cancel("1.2.3.999"), 404, "C307")
    _refused(ups.search(NoSuchAttribute="x"), 400, "0106")
    _refused(ups.search(limit="many"), 400, "0106")
    _refused(ups.subscribe(GLOBAL, "WAY-TOO-LONG-AE-TITLE"), 400, "C308")
    r = ups.subscribe("1.2.3.999", "NOBODY")
    _refused(r, 404, "C307")
    r = requests.put(base + "/1.2.3.999/state", data=json.dumps([{"00741000": {
        "vr": "CS", "Value": ["DONE"]}}]), timeout=30,
        headers={**h, "Content-Type": "application/dicom+json"})
    _refused(r, 400, "0106")
    r = requests.get(base, headers={**h, "Accept": "application/dicom+xml"}, timeout=30)
    assert r.status_code == 406
    # authentication and roles
    assert requests.get(base, timeout=30).status_code == 401
    reader = live.token("ups-reader", "data-scientist")
    uid, ds = workitem(generate_uid())
    r = UpsClient(live.dicomweb, reader).create(uid, ds)
    assert r.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(live.dicomweb.replace("http", "ws") + "/subscribers/NOAUTH", open_timeout=10)
    # still serving
    assert ups.create(uid, ds).status_code == 201
    assert ups.get(uid).status_code == 200
    live.flush_audit()
    from hounsfield.audit import query as audit_query

    with live.archive.session() as s:
        rows = audit_query(s, {"action": "UPS"})
    assert any(f"workitem {uid} created" in r.detail for r in rows)
