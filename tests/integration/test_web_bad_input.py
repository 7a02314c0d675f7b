"""Bad input against the real server: each gets a clear 4xx, never a 500, and the server keeps
serving; authentication and roles; one audit event per request, login successes and failures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from hounsfield.audit import query as audit_query
from hounsfield.web.models import ApiToken
from tests.web_data import ct_series, to_bytes
from tests.web_fixtures import admin_token, client, ct, live  # noqa: F401

pytestmark = pytest.mark.peers
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={}'


@pytest.fixture(scope="module")
def loaded(client, ct):  # noqa: ANN001, F811
    cts, seg = ct
    client.store_instances(cts + [seg])
    return cts


@pytest.fixture(scope="module")
def h(admin_token):  # noqa: ANN001, F811
    return {"Authorization": f"Bearer {admin_token}"}


def _post(live, h, body: bytes, ctype: str):  # noqa: ANN001, ANN202, F811
    return requests.post(live.dicomweb + "/studies", data=body,
                         headers={**h, "Content-Type": ctype}, timeout=30)


def _error(r: requests.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    return r.json()["error"]


def test_stow_malformed_bodies(live, h, loaded):  # noqa: ANN001, F811
    good = to_bytes(loaded[0])
    # wrong boundary
    body = b"--right\r\nContent-Type: application/dicom\r\n\r\n" + good + b"\r\n--right--\r\n"
    r = _post(live, h, body, STOW_TYPE.format("wrong"))
    assert r.status_code == 400 and "boundary" in _error(r)
    # no closing delimiter / truncated
    r = _post(live, h, body[:-12], STOW_TYPE.format("right"))
    assert r.status_code == 400 and "not terminated" in _error(r)
    # no boundary parameter at all
    r = _post(live, h, body, 'multipart/related; type="application/dicom"')
    assert r.status_code == 400 and "boundary" in _error(r)
    # not multipart
    r = _post(live, h, good, "application/dicom")
    assert r.status_code == 415
    # a part that is not DICOM only: nothing stored -> 409 with the reason
    junk = b"--x\r\nContent-Type: application/dicom\r\n\r\nhello, world\r\n--x--\r\n"
    r = _post(live, h, junk, STOW_TYPE.format("x"))
    assert r.status_code == 409
    assert "not" in r.json()["00081198"]["Value"][0]["00000902"]["Value"][0].lower()
    # a part of another media type
    other = b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n"
    r = _post(live, h, other, STOW_TYPE.format("x"))
    assert r.status_code == 409
    # truncated DICOM
    cut = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + good[:700] + b"\r\n--x--\r\n"
    r = _post(live, h, cut, STOW_TYPE.format("x"))
    assert r.status_code == 409
    # empty multipart
    r = _post(live, h, b"--x--\r\n", STOW_TYPE.format("x"))
    assert r.status_code == 400


def test_stow_body_limit_413(live, h):  # noqa: ANN001, F811
    big = ct_series(1, 1100, seed="too-big")  # ~2.4 MB > the 2 MB limit of the fixture
    body = (b"--x\r\nContent-Type: application/dicom\r\n\r\n" + to_bytes(big[0])
            + b"\r\n--x--\r\n")
    r = _post(live, h, body, STOW_TYPE.format("x"))
    assert r.status_code == 413 and "limit" in _error(r)

    def chunks():  # noqa: ANN202 - no Content-Length: the limit holds while streaming too
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    r = requests.post(live.dicomweb + "/studies", data=chunks(),
                      headers={**h, "Content-Type": STOW_TYPE.format("x")}, timeout=30)
    assert r.status_code == 413


def test_unknown_uids_404_and_bad_params_400(live, h, loaded):  # noqa: ANN001, F811
    c = loaded[0]
    st, se, sop = c.StudyInstanceUID, c.SeriesInstanceUID, c.SOPInstanceUID
    base = live.dicomweb
    for path, what in [
        (f"/studies/1.2.3.4/metadata", "study 1.2.3.4"),
        (f"/studies/{st}/series/1.2.3/metadata", "series 1.2.3"),
        (f"/studies/{st}/series/{se}/instances/1.2.3", "instance 1.2.3"),
        (f"/studies/{st}/series/{se}/instances/{sop}/frames/9", "frame 9"),
        (f"/studies/1.2.3/series", "study 1.2.3"),
        (f"/studies/{st}/series/{se}/instances/{sop}/bulkdata/00091234", "no bulk data"),
    ]:
        r = requests.get(base + path, headers=h, timeout=30)
        assert r.status_code == 404, path
        assert what in _error(r), (path, _error(r))
    for path, params, why in [
        ("/studies", {"limit": "-1"}, "limit"),
        ("/studies", {"limit": "ten"}, "limit"),
        ("/studies", {"StudyDate": "2024-01-01"}, "date"),
        ("/studies", {"NotAKeyword": "x"}, "NotAKeyword"),
        ("/studies", {"includefield": "Bogus"}, "Bogus"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
        ("/studies", {"StudyInstanceUID": "1" * 80}, "64"),
        (f"/studies/{st}/series/{se}/instances/{sop}/frames/0x1", None, "frame"),
        (f"/studies/{st}/series/{se}/instances/{sop}/rendered", {"window": "a,b"}, "window"),
        (f"/studies/{st}/series/{se}/instances/{sop}/rendered", {"viewport": "0,0"}, "viewport"),
        ("/studies/not-a-uid/metadata", None, "not a UID"),
    ]:
        r = requests.get(base + path, params=params, headers=h, timeout=30)
        assert r.status_code == 400, (path, params, r.status_code)
        assert why in _error(r), (path, _error(r))
    r = requests.get(base + "/studies", headers={**h, "Accept": "application/dicom+xml"},
                     timeout=30)
    assert r.status_code == 406


@pytest.mark.parametrize("value", [
    "' OR 1=1 --", "x'; DROP TABLE study; --", "%", "_", "\\", "DOE^JANE' UNION SELECT 1",
    "*' OR ''='",
])
def test_sql_like_values_are_just_values(live, h, loaded, value):  # noqa: ANN001, F811
    r = requests.get(live.dicomweb + "/studies", params={"PatientName": value}, headers=h,
                     timeout=30)
    assert r.status_code == 200
    assert r.json() == []
    r = requests.get(live.dicomweb + "/studies", params={"AccessionNumber": value}, headers=h,
                     timeout=30)
    assert r.status_code == 200 and r.json() == []
    assert len(requests.get(live.dicomweb + "/studies", headers=h, timeout=30).json()) >= 1


@pytest.mark.parametrize("path", [
    "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "7FE00010/../../index.sqlite",
    "%2e%2e/%2e%2e/index.sqlite", "00000000/x", "7FE00010/", "/etc/passwd",
])
def test_bulkdata_path_traversal(live, h, loaded, path):  # noqa: ANN001, F811
    c = loaded[0]
    url = (f"{live.dicomweb}/studies/{c.StudyInstanceUID}/series/{c.SeriesInstanceUID}"
           f"/instances/{c.SOPInstanceUID}/bulkdata/{path}")
    r = requests.get(url, headers=h, timeout=30)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"root:" not in r.content and b"SQLite" not in r.content


def test_viewer_path_traversal(live):  # noqa: ANN001, F811
    for path in ["../../pyproject.toml", "..%2F..%2Fpyproject.toml", "%2e%2e/%2e%2e/README.md"]:
        r = requests.get(f"{live.url}/viewer/{path}", timeout=30, allow_redirects=False)
        assert r.status_code in (303, 400, 404), path
        assert b"[project]" not in r.content


def test_authentication_required_and_bad_tokens(live, loaded):  # noqa: ANN001, F811
    url = live.dicomweb + "/studies"
    r = requests.get(url, timeout=30)
    assert r.status_code == 401 and "authentication required" in _error(r)
    assert r.headers["www-authenticate"].startswith("Bearer")
    for bad in ["hf_forged-token-value", "not-even-our-format", "hf_" + "A" * 43]:
        r = requests.get(url, headers={"Authorization": f"Bearer {bad}"}, timeout=30)
        assert r.status_code == 401, bad
    r = requests.get(url, headers={"Authorization": "Basic ZGVtbzpkZW1v"}, timeout=30)
    assert r.status_code == 401 and "Bearer" in _error(r)
    r = requests.get(url, cookies={"hf_session": "forged"}, timeout=30)
    assert r.status_code == 401
    # an expired token
    token = live.token("expiring", "radiologist")
    with live.archive.write_session() as s, s.begin():
        row = s.query(ApiToken).filter(ApiToken.prefix == token[:10]).one()
        row.expires_at = datetime.now(timezone.utc) - timedelta(minutes=1)
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 401 and "expired" in _error(r)
    # /api too; health is allow-listed
    assert requests.get(live.url + "/api/me", timeout=30).status_code == 401
    assert requests.get(live.url + "/api/health", timeout=30).status_code == 200


def test_roles_and_permissions(live, loaded):  # noqa: ANN001, F811
    scientist = live.user("dora", "data-scientist")
    assert scientist.get(live.dicomweb + "/studies", timeout=30).status_code == 200
    body = (b"--x\r\nContent-Type: application/dicom\r\n\r\n"
            + to_bytes(ct_series(1, 16, seed="role")[0]) + b"\r\n--x--\r\n")
    r = scientist.post(live.dicomweb + "/studies", data=body,
                       headers={"Content-Type": STOW_TYPE.format("x")}, timeout=30)
    assert r.status_code == 403 and "studies:write" in _error(r)
    assert scientist.get(live.url + "/api/audit", timeout=30).status_code == 403
    assert scientist.get(live.url + "/audit", timeout=30).status_code == 403
    annotator = live.user("ann", "annotator")
    r = annotator.post(live.dicomweb + "/studies", data=body,
                       headers={"Content-Type": STOW_TYPE.format("x")}, timeout=30)
    assert r.status_code == 200
    assert annotator.get(live.url + "/api/users", timeout=30).status_code == 403


def test_login_and_requests_are_audited(live, h, loaded):  # noqa: ANN001, F811
    bad = requests.post(live.url + "/api/auth/login",
                        json={"username": "demo", "password": "wrong"}, timeout=30)
    assert bad.status_code == 401
    console_bad = requests.post(live.url + "/login", data={"username": "ghost", "password": "x"},
                                timeout=30, allow_redirects=False)
    assert console_bad.status_code == 401 and "wrong user name or password" in console_bad.text
    s = requests.Session()
    ok = s.post(live.url + "/login", data={"username": "demo", "password": "demo"}, timeout=30,
                allow_redirects=False)
    assert ok.status_code == 303 and "hf_session" in ok.cookies
    c = loaded[0]
    r = s.get(f"{live.dicomweb}/studies/{c.StudyInstanceUID}/series/{c.SeriesInstanceUID}"
              "/metadata", timeout=30)
    assert r.status_code == 200
    live.flush_audit()
    with live.archive.session() as db:
        logins = audit_query(db, {"action": "LOGIN"}, limit=100)
        wado = audit_query(db, {"action": "WADO", "actor": "demo"}, limit=100)
        unauth = audit_query(db, {"actor": "anonymous"}, limit=100)
    outcomes = {(e.actor, e.outcome) for e in logins}
    assert ("demo", 8) in outcomes and ("ghost", 8) in outcomes and ("demo", 0) in outcomes
    assert len(wado) == 1  # one event per request, not per instance
    assert wado[0].study_instance_uid == c.StudyInstanceUID and wado[0].role == "admin"
    assert "metadata of 4 instance(s)" in wado[0].detail
    assert any(e.outcome == 8 for e in unauth)  # the 401s above
    # the audit API (admins) answers the same
    r = requests.get(live.url + "/api/audit", params={"action": "LOGIN", "outcome": 8},
                     headers=h, timeout=30)
    assert r.status_code == 200 and {e["actor"] for e in r.json()} >= {"demo", "ghost"}
    # logout ends the session
    assert s.post(live.url + "/logout", timeout=30).status_code == 200
    assert s.get(live.dicomweb + "/studies", timeout=30).status_code == 401


def test_server_keeps_serving(live, h):  # noqa: ANN001, F811
    assert requests.get(live.dicomweb + "/studies", headers=h, timeout=30).status_code == 200
