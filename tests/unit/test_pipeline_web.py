"""The pipeline's web doors on the real app (FastAPI TestClient) with a real archive, a real
MLflow registry and the DBOS job engine's client: routing rules (read, validate, replace: admins
only, audited), "Run AI" on a study (routed and recorded; a rule naming an alias nobody promoted
fails the job with that reason), the jobs API and pages, the study page's AI section."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.audit import AuditEvent
from hounsfield.config import load_settings
from hounsfield.deploy.models import RouteEvent
from hounsfield.web import auth
from hounsfield.web.app import create_app
from tests.web_data import ct_series, to_bytes

RULES = """\
rules:
  - name: chest
    match: {modality: [CT], slices: {min: 6}}
    model: nodules@production
    profile: all
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pipeline-web")
    settings = load_settings(data_dir=tmp / "var", profile="demo")
    archive = Archive.open(settings)
    cts = ct_series(8, 32, seed="pw-ct", patient="PIPE^WEB", description="CT PIPE")
    out = store_instances(archive, [parse_part10(to_bytes(d)) for d in cts], source="test")
    assert all(o.status == "stored" for o in out)
    tokens = {}
    for user, role in (("root", "admin"), ("rad", "radiologist"), ("ann", "annotator")):
        auth.create_user(archive, user, role, None)
        tokens[role] = {"Authorization": f"Bearer {auth.issue_token(archive, user, days=1)[0]}"}
    with TestClient(create_app(settings, archive)) as client:
        yield client, tokens, archive, str(cts[0].StudyInstanceUID)
    archive.close()


def test_rules_read_validate_replace(env) -> None:  # noqa: ANN001
    c, tok, archive, _study = env
    admin, rad = tok["admin"], tok["radiologist"]
    r = c.get("/api/rules", headers=rad)
    assert r.status_code == 200 and r.json()["rules"] == [] and r.json()["text"] == ""
    bad = RULES.replace("nodules@production", "nodules") + "    destinations: [nowhere]\n"
    r = c.post("/api/rules/validate", content=bad, headers={**rad, "content-type": "text/plain"})
    assert r.status_code == 200 and not r.json()["valid"]
    assert any("alias" in p for p in r.json()["problems"]), r.json()
    r = c.put("/api/rules", content=RULES, headers={**rad, "content-type": "text/plain"})
    assert r.status_code == 403
    r = c.put("/api/rules", content=RULES + "    destinations: [nowhere]\n",
              headers={**admin, "content-type": "text/plain"})
    assert r.status_code == 400 and "'nowhere' is not configured" in r.json()["error"]
    assert c.get("/api/rules", headers=rad).json()["text"] == ""  # nothing half-written
    r = c.put("/api/rules", content=RULES, headers={**admin, "content-type": "text/plain"})
    assert r.status_code == 200 and [x["name"] for x in r.json()["rules"]] == ["chest"]
    assert c.get("/api/rules", headers=rad).json()["text"] == RULES
    c.app.state.audit.flush()
    with archive.session() as s:
        details = [e.detail for e in s.scalars(select(AuditEvent).where(
            AuditEvent.actor == "root"))]
    assert "rules replaced: chest" in details
    page = c.get("/rules", headers=rad)
    assert page.status_code == 200 and "chest" in page.text and "Validate and save" not in page.text


def test_run_ai_routes_and_records_then_jobs_pages(env) -> None:  # noqa: ANN001
    c, tok, archive, study = env
    admin, rad, ann = tok["admin"], tok["radiologist"], tok["annotator"]
    c.put("/api/rules", content=RULES, headers={**admin, "content-type": "text/plain"})
    r = c.get(f"/api/studies/{study}/route", headers=ann)
    assert r.status_code == 200 and any("rule chest matched" in x for x in r.json()["log"])
    with archive.session() as s:  # explain records nothing
        assert s.scalars(select(RouteEvent)).all() == []
    assert c.post(f"/api/studies/{study}/ai", headers=ann).status_code == 403
    assert c.post("/api/studies/1.2.3.4/ai", headers=rad).status_code == 404
    r = c.post(f"/api/studies/{study}/ai", headers=rad)
    assert r.status_code == 200, r.text
    body = r.json()
    # no version was ever promoted to nodules@production: the job fails with that reason
    assert body["outcome"] == "no-model" and body["job_id"], body
    job = c.get(f"/api/jobs/{body['job_id']}", headers=ann).json()
    assert job["state"] == "failed" and "nodules" in job["error"]
    assert job["rule"] == "chest" and job["actor"] == "rad" and job["trigger"] == "api"
    assert any("chose series" in line for line in job["log"])
    assert [j["id"] for j in c.get("/api/jobs?state=failed", headers=ann).json()] == [job["id"]]
    assert c.get("/api/jobs?state=bogus", headers=ann).status_code == 400
    assert c.get("/api/jobs/job-nope", headers=ann).status_code == 404
    # a job that failed while routed never reached the engine: retry says what to do instead
    r = c.post(f"/api/jobs/{job['id']}/retry", headers=rad)
    assert r.status_code == 409 and "run AI on the study again" in r.json()["error"]
    r = c.post(f"/api/jobs/{job['id']}/cancel", headers=rad)
    assert r.status_code == 409 and "only queued or running" in r.json()["error"]
    with archive.session() as s:
        ev = s.scalars(select(RouteEvent).where(RouteEvent.study_instance_uid == study)).all()
    assert [e.outcome for e in ev] == ["no-model"] and ev[0].actor == "rad"
    for path in ("/jobs", f"/jobs/{job['id']}", f"/studies/{study}"):
        p = c.get(path, headers=rad)
        assert p.status_code == 200 and job["id"] in p.text, path
    page = c.get(f"/studies/{study}", headers=rad).text
    assert "run-ai" in page and page.count('class="ai-job"') == 1
    assert "AI results" not in page.split("</title>")[0]  # the section is in the body only
    assert "run-ai" not in c.get(f"/studies/{study}", headers=ann).text
