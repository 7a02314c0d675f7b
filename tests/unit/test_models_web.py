"""``/api/models`` and the console's models page on the real app (FastAPI TestClient), a real
MLflow registry and the archive's audit trail in a temporary data directory."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hounsfield.archive import Archive
from hounsfield.config import load_settings
from hounsfield.registry.mlflow_registry import ModelRegistry
from hounsfield.web import auth
from hounsfield.web.app import create_app
from tests.model_helpers import attach, register_version


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("models-web")
    settings = load_settings(data_dir=tmp / "var", profile="demo")
    archive = Archive.open(settings)
    reg = ModelRegistry(settings)
    versions = [register_version(reg, tmp, "nodules") for _ in range(3)]
    attach(reg, versions[0], tmp, good=True)
    attach(reg, versions[1], tmp, good=True)
    attach(reg, versions[2], tmp, good=False)
    tokens = {}
    auth.create_user(archive, "console-admin", "admin", "a-long-password")
    for user, role in (("root", "admin"), ("rad", "radiologist")):
        auth.create_user(archive, user, role, None)
        tokens[role] = {"Authorization": f"Bearer {auth.issue_token(archive, user, days=1)[0]}"}
    with TestClient(create_app(settings, archive)) as client:
        yield client, tokens, versions
    archive.close()


def test_api_list_promote_resolve_rollback(env) -> None:  # noqa: ANN001
    c, tok, (v1, v2, v3) = env
    admin, rad = tok["admin"], tok["radiologist"]
    assert c.get("/api/models").status_code == 401
    models = c.get("/api/models", headers=rad).json()
    assert [m["name"] for m in models] == ["nodules"] and models[0]["aliases"] == {}
    vers = {v["version"]: v for v in models[0]["versions"]}
    assert vers["1"]["device_uid"] == v1.device_uid and vers["3"]["device_uid"] == v3.device_uid
    assert vers["1"]["evaluation"]["passed"] and not vers["3"]["evaluation"]["passed"]
    assert "detection rate" in vers["3"]["evaluation"]["reason"]

    body = {"version": "1", "reason": "passes test"}
    r = c.post("/api/models/nodules/promote", json=body, headers=rad)
    assert r.status_code == 403 and "an admin approves models" in r.json()["error"]
    r = c.post("/api/models/nodules/promote", json={**body, "version": "abc"}, headers=admin)
    assert r.status_code == 400 and "version" in r.json()["error"]
    r = c.post("/api/models/nodules/promote", json={**body, "alias": "latest"}, headers=admin)
    assert r.status_code == 400 and "reserved" in r.json()["error"]
    r = c.post("/api/models/nodules/promote", json={**body, "version": "3"}, headers=admin)
    assert r.status_code == 409 and "refused" in r.json()["error"]
    assert "detection rate at operating point is 0.333" in r.json()["error"]
    r = c.post("/api/models/nodules/promote", json={**body, "version": "7"}, headers=admin)
    assert r.status_code == 404
    r = c.get("/api/models/resolve", params={"ref": "nodules@production"}, headers=rad)
    assert r.status_code == 404 and "no alias 'production'" in r.json()["error"]

    r = c.post("/api/models/nodules/promote", json=body, headers=admin)
    assert r.status_code == 200 and r.json()["to_version"] == "1"
    r = c.get("/api/models/resolve", params={"ref": "nodules@production"}, headers=rad)
    assert r.status_code == 200 and r.json()["device_uid"] == v1.device_uid
    for bad in ("nodules", "nodules@latest", "nodules@1"):
        r = c.get("/api/models/resolve", params={"ref": bad}, headers=rad)
        assert r.status_code == 400
        assert "routing rules name an alias such as nodules@production" in r.json()["error"]
    r = c.get("/api/models/resolve", params={"ref": "nodules@1", "routing": "false"}, headers=rad)
    assert r.status_code == 200 and r.json()["aliases"] == ["production"]

    assert c.post("/api/models/nodules/promote", json={**body, "version": "2"},
                  headers=admin).status_code == 200
    r = c.post("/api/models/nodules/rollback", json={"reason": "v2 regressed"}, headers=rad)
    assert r.status_code == 403
    r = c.post("/api/models/nodules/rollback", json={"reason": "v2 regressed"}, headers=admin)
    assert r.status_code == 200 and (r.json()["from_version"], r.json()["to_version"]) == ("2", "1")
    r = c.post("/api/models/nodules/demote", json={"reason": ""}, headers=admin)
    assert r.status_code == 400
    r = c.post("/api/models/nodules/demote", json={"reason": "recall"}, headers=admin)
    assert r.status_code == 200 and r.json()["to_version"] is None
    hist = c.get("/api/models/nodules/history", headers=rad).json()
    assert [(h["action"], h["to_version"], h["by"]) for h in hist] == [
        ("promote", "1", "root"), ("promote", "2", "root"), ("rollback", "1", "root"),
        ("demote", None, "root")]
    assert hist[0]["source"] == "testclient"
    shown = c.get("/api/models/nodules", headers=rad).json()
    assert shown["aliases"] == {} and len(shown["history"]) == 4
    assert c.get("/api/models/missing", headers=rad).status_code == 404
    assert c.get("/api/models/a@b", headers=rad).status_code == 400

    audit = c.get("/api/audit", params={"action": "MODEL-PROMOTE"}, headers=admin).json()
    assert [(a["actor"], a["outcome"]) for a in audit][-2:] == [("root", 4), ("rad", 8)]
    assert any(a["outcome"] == 0 and a["destination"] == "nodules@production" for a in audit)
    roll = c.get("/api/audit", params={"action": "MODEL-ROLLBACK"}, headers=admin).json()
    assert {(a["actor"], a["outcome"]) for a in roll} == {("root", 0), ("rad", 8)}
    assert c.get("/api/audit", params={"action": "MODEL-DEMOTE"}, headers=admin).json()


def test_console_models_page(env) -> None:  # noqa: ANN001
    c, _tok, (v1, _v2, v3) = env
    c.cookies.clear()
    r = c.get("/models", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert c.post("/login", data={"username": "console-admin", "password": "a-long-password"},
                  follow_redirects=False).status_code == 303
    page = c.get("/models").text
    assert v1.device_uid in page and v3.device_uid in page
    assert 'id="version-nodules-3"' in page and "not promotable" in page
    assert "Approve → production" in page
    r = c.post("/models/nodules/promote", data={"version": "3", "reason": "try"})
    assert r.status_code == 409 and "refused" in r.text and "detection rate" in r.text
    r = c.post("/models/nodules/promote", data={"version": "1", "reason": "approved here"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/models?notice=")
    page = c.get(r.headers["location"]).text
    assert "production → 1" in page and "approved here" in page and "Demote production" in page
    r = c.post("/models/nodules/rollback", data={"reason": "back"})
    assert r.status_code == 404 and "no earlier version to roll back to" in r.text
    c.post("/models/nodules/promote", data={"version": "2", "reason": "retrained"})
    r = c.post("/models/nodules/rollback", data={"reason": "back"})
    assert r.status_code == 200 and "rollback: production 2 → 1" in r.text
    assert "console-admin" in r.text

    c.cookies.clear()
    auth.create_user(c.app.state.archive, "ann", "annotator", "a-long-password")
    assert c.post("/login", data={"username": "ann", "password": "a-long-password"},
                  follow_redirects=False).status_code == 303
    page = c.get("/models").text
    assert "Approve → production" not in page and "PASS" in page
    r = c.post("/models/nodules/demote", data={"reason": "no"})
    assert r.status_code == 403 and "an admin approves models" in r.text
