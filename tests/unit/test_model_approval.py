"""Approved models only: the evaluation gate, admin approval, aliases, rollback, history,
audit and Device UIDs — on a real MLflow registry in a temporary data directory."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.audit import AuditEvent
from hounsfield.config import load_settings
from hounsfield.dicom.uids import validate_uid
from hounsfield.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from hounsfield.evaluate.study import AcceptanceTargets
from hounsfield.registry import approval
from hounsfield.registry.approval import Approver, PromotionRefused, resolve_for_routing
from hounsfield.registry.mlflow_registry import DEVICE_UID_TAG, ModelRegistry
from tests.model_helpers import attach, register_version

ADMIN = Approver("alice", "admin", "cli:test")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("registry")
    settings = load_settings(data_dir=tmp / "var", profile="demo")
    archive = Archive.open(settings)
    yield ModelRegistry(settings), archive, tmp
    archive.close()


def _audit(archive: Archive, action: str) -> list[AuditEvent]:
    with archive.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))


def test_device_uid_new_per_version_and_stable(env) -> None:  # noqa: ANN001
    reg, _archive, tmp = env
    a, b = register_version(reg, tmp, "uids"), register_version(reg, tmp, "uids")
    assert a.device_uid != b.device_uid
    assert validate_uid(a.device_uid) == (True, "") and a.device_uid.startswith("2.25.")
    assert [v.device_uid for v in reg.versions("uids")] == [a.device_uid, b.device_uid]
    assert reg.resolve("uids@1").device_uid == a.device_uid
    # a version registered before device UIDs existed: one is assigned on first read, and kept
    run_id = reg.start_run("legacy", {})
    reg.client.create_model_version("uids", source=a.source, run_id=run_id, tags={"x": "1"})
    assert DEVICE_UID_TAG not in reg.client.get_model_version("uids", "3").tags
    first = reg.resolve("uids@3").device_uid
    assert reg.client.get_model_version("uids", "3").tags[DEVICE_UID_TAG] == first
    assert ModelRegistry(reg.settings).resolve("uids@3").device_uid == first
    assert validate_uid(first) == (True, "") and first not in (a.device_uid, b.device_uid)


def test_promotion_needs_a_passing_report_and_an_admin(env) -> None:  # noqa: ANN001
    reg, archive, tmp = env
    mv = register_version(reg, tmp, "gate")
    with pytest.raises(PromotionRefused, match="no evaluation report attached"):
        approval.promote(reg, archive, "gate@1", approver=ADMIN, reason="first")
    attach(reg, mv, tmp, good=False)
    with pytest.raises(PromotionRefused) as exc:
        approval.promote(reg, archive, "gate@1", approver=ADMIN, reason="first")
    assert "newest attached report 'luna-v1-test'" in exc.value.reason
    assert "detection rate at operating point is 0.333, needs >= 0.95" in exc.value.reason
    attach(reg, mv, tmp, good=True, label="luna-v2-test")
    with pytest.raises(PermissionDenied, match="an admin approves models"):
        approval.promote(reg, archive, "gate@1", approver=Approver("bob", "radiologist"),
                         reason="please")
    with pytest.raises(InvalidInput, match="give a reason"):
        approval.promote(reg, archive, "gate@1", approver=ADMIN, reason=" ")
    with pytest.raises(InvalidInput, match="NAME@VERSION"):
        approval.promote(reg, archive, "gate", approver=ADMIN, reason="x")
    with pytest.raises(NotFound, match="no version '9'"):
        approval.promote(reg, archive, "gate@9", approver=ADMIN, reason="x")
    with pytest.raises(NotFound, match="no alias 'production'"):
        reg.resolve("gate@production")
    entry = approval.promote(reg, archive, "gate@1", approver=ADMIN, reason="passes v2 test")
    assert (entry.to_version, entry.from_version, entry.report) == ("1", None, "luna-v2-test")
    assert reg.resolve("gate@production").version == "1"
    assert reg.resolve("gate@1").aliases == ("production",)
    with pytest.raises(Conflict, match="already is gate@production"):
        approval.promote(reg, archive, "gate@1", approver=ADMIN, reason="again")
    events = [e for e in _audit(archive, "MODEL-PROMOTE") if e.destination == "gate@production"]
    assert [e.outcome for e in events] == [4, 4, 8, 4, 4, 4, 0, 4]
    assert events[2].actor == "bob" and "an admin approves" in events[2].detail
    assert events[6].actor == "alice" and events[6].source == "cli:test"
    assert events[6].event_id == "110113 Security Alert" and "passes v2 test" in events[6].detail


def test_report_judged_with_looser_targets_does_not_count(env) -> None:  # noqa: ANN001
    reg, archive, tmp = env
    mv = register_version(reg, tmp, "loose")
    attach(reg, mv, tmp, good=False, targets=AcceptanceTargets(min_detection_rate=0.3,
                                                               max_fn_per_100=100))
    with pytest.raises(PromotionRefused) as exc:
        approval.promote(reg, archive, "loose@1", approver=ADMIN, reason="x")
    assert "judged with min_detection_rate = 0.3, the recipe requires 0.95" in exc.value.reason
    assert "max_fn_per_100 = 100" in exc.value.reason


def test_newest_report_counts_unless_one_is_named(env) -> None:  # noqa: ANN001
    reg, archive, tmp = env
    mv = register_version(reg, tmp, "newest")
    attach(reg, mv, tmp, good=True, label="a-test")
    attach(reg, mv, tmp, good=False, label="b-heldout-test")
    assert approval.attached_reports(reg, reg.resolve("newest@1")) == ["b-heldout-test", "a-test"]
    with pytest.raises(PromotionRefused, match="'b-heldout-test'"):
        approval.promote(reg, archive, "newest@1", approver=ADMIN, reason="x")
    with pytest.raises(PromotionRefused, match="has no report 'c'"):
        approval.promote(reg, archive, "newest@1", approver=ADMIN, reason="x", report="c")
    e = approval.promote(reg, archive, "newest@1", approver=ADMIN, reason="x", report="a-test")
    assert e.report == "a-test"


def test_rollback_demote_history_and_routing(env) -> None:  # noqa: ANN001
    reg, archive, tmp = env
    v1, v2 = register_version(reg, tmp, "flow"), register_version(reg, tmp, "flow")
    for mv in (v1, v2):
        attach(reg, mv, tmp, good=True)
    approval.promote(reg, archive, "flow@1", approver=ADMIN, reason="initial")
    approval.promote(reg, archive, "flow@2", approver=ADMIN, reason="retrained")
    assert resolve_for_routing(reg, "flow@production").device_uid == v2.device_uid
    for bad in ("flow", "flow@latest", "flow@2"):
        with pytest.raises(InvalidInput, match="routing rules name an alias such as "
                                               "flow@production, not"):
            resolve_for_routing(reg, bad)
    assert reg.resolve("flow").version == "2"  # research commands keep plain NAME

    back = approval.rollback(reg, archive, "flow", approver=ADMIN, reason="v2 misses nodules")
    assert (back.from_version, back.to_version) == ("2", "1")
    assert resolve_for_routing(reg, "flow@production").version == "1"
    with pytest.raises(NotFound, match="no earlier version to roll back to"):
        approval.rollback(reg, archive, "flow", approver=ADMIN, reason="again")

    approval.demote(reg, archive, "flow", approver=ADMIN, reason="recall")
    with pytest.raises(NotFound, match="no alias 'production'"):
        resolve_for_routing(reg, "flow@production")
    with pytest.raises(NotFound, match="no alias 'production' to demote"):
        approval.demote(reg, archive, "flow", approver=ADMIN, reason="recall")
    approval.rollback(reg, archive, "flow", approver=ADMIN, reason="undo the recall")
    assert reg.resolve("flow@production").version == "1"

    hist = approval.history(reg, "flow")
    assert [(h.action, h.from_version, h.to_version) for h in hist] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1"),
        ("demote", "1", None), ("rollback", None, "1")]
    assert all(h.by == "alice" and h.at.endswith("+00:00") for h in hist)
    assert hist[1].reason == "retrained" and hist[1].device_uid == v2.device_uid
    assert len(_audit(archive, "MODEL-ROLLBACK")) >= 3 and _audit(archive, "MODEL-DEMOTE")

    # an alias set by hand in MLflow (not through an audited promotion) is not routed to
    reg.client.set_registered_model_alias("flow", "staging", "2")
    assert reg.resolve("flow@staging").version == "2"
    with pytest.raises(NotFound, match="not promoted through Hounsfield"):
        resolve_for_routing(reg, "flow@staging")
    with pytest.raises(InvalidInput, match="reserved"):
        reg.resolve("flow@v2")


def test_cli_promote_list_history_rollback(tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from hounsfield.cli.main import app as cli
    from hounsfield.web import auth

    settings = load_settings(data_dir=tmp_path / "var", profile="demo")
    archive = Archive.open(settings)
    auth.create_user(archive, "alice", "admin", None)
    auth.create_user(archive, "rad", "radiologist", None)
    reg = ModelRegistry(settings)
    v1, v2 = register_version(reg, tmp_path, "cli"), register_version(reg, tmp_path, "cli")
    attach(reg, v1, tmp_path, good=True)
    attach(reg, v2, tmp_path, good=False)
    runner = CliRunner()

    def run(*args: str):  # noqa: ANN202
        return runner.invoke(cli, ["--data-dir", str(tmp_path / "var"), "models", *args],
                             env={"COLUMNS": "300"})

    r = run("promote", "cli@1", "--as", "rad", "--reason", "looks good")
    assert r.exit_code == 2 and "an admin approves models" in r.output
    r = run("promote", "cli@1", "--as", "nobody", "--reason", "x")
    assert r.exit_code == 2 and "no user 'nobody'" in r.output
    r = run("promote", "cli@2", "--as", "alice", "--reason", "x")
    assert r.exit_code == 2 and "refused" in r.output and "detection rate" in r.output
    r = run("promote", "cli@1", "--as", "alice", "--reason", "passes test")
    assert r.exit_code == 0, r.output
    assert "production - -> 1 by alice" in r.output and v1.device_uid in r.output
    r = run("list", "cli")
    assert r.exit_code == 0, r.output
    assert (f"cli@1  aliases: production  evaluation: PASS luna-v1-test  device UID: "
            f"{v1.device_uid}") in r.output
    assert f"cli@2  aliases: -  evaluation: FAIL luna-v1-test  device UID: {v2.device_uid}" \
        in r.output
    r = run("show", "cli@production")
    assert r.exit_code == 0 and "aliases: production" in r.output
    assert f"device_uid: {v1.device_uid}" in r.output
    r = run("rollback", "cli", "--as", "alice", "--reason", "x")
    assert r.exit_code == 2 and "no earlier version" in r.output
    r = run("demote", "cli", "--as", "alice", "--reason", "recall")
    assert r.exit_code == 0 and "production 1 -> - by alice" in r.output
    r = run("history", "cli", "--json")
    assert r.exit_code == 0
    import json

    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [(e["action"], e["to_version"]) for e in lines] == [("promote", "1"), ("demote", None)]
    assert lines[0]["source"].startswith("cli:") and lines[0]["reason"] == "passes test"
    r = run("history", "cli")
    assert r.exit_code == 0 and "recall" in r.output
    kinds = [(e.action, e.outcome, e.actor) for e in _audit(archive, "MODEL-PROMOTE")]
    assert kinds == [("MODEL-PROMOTE", 8, "rad"), ("MODEL-PROMOTE", 4, "alice"),
                     ("MODEL-PROMOTE", 0, "alice")]
    archive.close()


def test_rollback_rechecks_the_earlier_version(env) -> None:  # noqa: ANN001
    reg, archive, tmp = env
    v1, v2 = register_version(reg, tmp, "recheck"), register_version(reg, tmp, "recheck")
    attach(reg, v1, tmp, good=True)
    attach(reg, v2, tmp, good=True)
    approval.promote(reg, archive, "recheck@1", approver=ADMIN, reason="a")
    approval.promote(reg, archive, "recheck@2", approver=ADMIN, reason="b")
    attach(reg, reg.resolve("recheck@1"), tmp, good=False, label="new-site-test")
    with pytest.raises(PromotionRefused, match=r"rollback of recheck@production to recheck@1 "
                                               r"refused: .*'new-site-test'"):
        approval.rollback(reg, archive, "recheck", approver=ADMIN, reason="c")
    assert reg.resolve("recheck@production").version == "2"
    assert [h.action for h in approval.history(reg, "recheck")] == ["promote", "promote"]
