"""Export pieces without peers: destination settings, retry policy, transient/permanent
classification, output profiles, the per-destination slot limit, STOW-RS response parsing."""

from __future__ import annotations

import threading

import httpx
import pytest

from hounsfield.config import RetryPolicy, load_settings
from hounsfield.errors import ConfigurationError, InvalidInput
from hounsfield.pacs import stow
from hounsfield.pacs.export import classify, destination, kind_of, slot
from hounsfield.pacs.profiles import kinds_for
from tests.dimse_peers import wait_until


def _settings(tmp_path, destinations: dict, **kw):  # noqa: ANN001, ANN202
    return load_settings(data_dir=tmp_path, profile="demo",
                         export={"destinations": destinations}, **kw)


def test_destinations_parse_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("PACS_TOKEN", "tok-123")
    s = _settings(tmp_path, {
        "pacs": {"kind": "dimse", "remote": "main"},
        "web": {"kind": "stowrs", "url": "https://pacs.example/dicom-web/",
                "token_env": "PACS_TOKEN", "profile": "all"}},
        dicom={"remotes": {"main": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104}}})
    pacs, web = destination(s, "pacs"), destination(s, "web")
    assert pacs.profile == "ai-ready" and pacs.max_associations == 2
    assert pacs.retry == RetryPolicy()
    assert web.url == "https://pacs.example/dicom-web"
    assert web.token.get_secret_value() == "tok-123" and "tok-123" not in repr(web)
    with pytest.raises(InvalidInput, match="known: pacs, web"):
        destination(s, "nope")


@pytest.mark.parametrize(("dest", "message"), [
    ({"kind": "dimse", "ae_title": "A", "host": "h", "port": 1, "profile": "fancy"},
     "unknown output profile 'fancy': known profiles are ai-ready, legacy, all"),
    ({"kind": "dimse", "remote": "missing"}, "not in dicom.remotes"),
    ({"kind": "dimse", "host": "h", "port": 104}, "needs remote"),
    ({"kind": "dimse", "remote": "x", "host": "h"}, "not both"),
    ({"kind": "ftp", "url": "x"}, "kind"),
    ({"kind": "stowrs", "url": "pacs.example/dicom-web"}, "url must be http"),
    ({"kind": "stowrs", "url": "http://h", "username": "u"}, "needs both username and password"),
    ({"kind": "stowrs", "url": "http://h", "username": "u", "password": "p", "token": "t"},
     "not both"),
    ({"kind": "stowrs", "url": "http://h", "token_env": "HF_TEST_UNSET_VAR"}, "is not set"),
    ({"kind": "dimse", "ae_title": "A", "host": "h", "port": 1, "max_associations": 0},
     "max_associations"),
    ({"kind": "dimse", "ae_title": "A", "host": "h", "port": 1,
      "retry": {"initial_delay_s": 10, "max_delay_s": 5}}, "below initial_delay_s"),
    ({"kind": "dimse", "ae_title": "A", "host": "h", "port": 1, "retries": 3}, "retries"),
])
def test_bad_destinations_are_refused_clearly(tmp_path, dest, message):
    with pytest.raises(ConfigurationError, match=message):
        _settings(tmp_path, {"d": dest})


def test_bad_destination_name(tmp_path):
    with pytest.raises(ConfigurationError, match="destination names"):
        _settings(tmp_path, {"a b": {"kind": "dimse", "ae_title": "A", "host": "h", "port": 1}})


def test_retry_policy_backs_off_for_hours_then_dead():
    p = RetryPolicy()
    assert [p.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert p.delay(11) == p.delay(19) == 900  # capped at 15 min
    assert 2 * 3600 < p.total_s() < 3 * 3600
    assert not p.dead(19) and p.dead(20)
    with pytest.raises(ValueError, match="start at 1"):
        p.delay(0)
    j = RetryPolicy(jitter=0.25)
    spread = {round(j.delay(5, key=f"job{i}"), 6) for i in range(20)}
    assert len(spread) > 10 and all(12 <= d <= 20 for d in spread)
    assert j.delay(5, key="job1") == j.delay(5, key="job1")  # the same on a replay
    assert RetryPolicy(max_attempts=1).dead(1)


@pytest.mark.parametrize(("status", "outcome"), [
    (0x0000, "delivered"), (0xB000, "delivered"), (0xB007, "delivered"), (0x0001, "delivered"),
    (-1, "retry"), (-2, "retry"), (0xA700, "retry"), (0xA7FF, "retry"), (0x0110, "retry"),
    (-500, "retry"), (-503, "retry"), (-408, "retry"), (-429, "retry"),
    (-3, "dead"), (-4, "dead"), (0xA900, "dead"), (0xC000, "dead"), (0xC123, "dead"),
    (0x0122, "dead"), (0x0124, "dead"), (0x0111, "dead"),
    (-400, "dead"), (-401, "dead"), (-403, "dead"), (-404, "dead"), (-409, "dead"),
    (-301, "dead"),
])
def test_classify(status, outcome):
    assert classify(status) == outcome


def test_profiles_and_kinds(tmp_path):
    s = _settings(tmp_path, {})
    assert kinds_for(s, "ai-ready") == {"SEG", "SR"}
    assert kinds_for(s, "legacy") == {"SC", "GSPS", "KOS", "PDF"}
    assert kinds_for(s, "all") == {"SEG", "SR", "SC", "GSPS", "KOS", "PDF"}
    with pytest.raises(InvalidInput, match="known profiles are ai-ready, legacy, all"):
        kinds_for(s, "everything")
    assert kind_of("1.2.840.10008.5.1.4.1.1.66.4") == "SEG"
    assert kind_of("1.2.840.10008.5.1.4.1.1.88.34") == "SR"
    assert kind_of("1.2.840.10008.5.1.4.1.1.7") == kind_of("1.2.840.10008.5.1.4.1.1.7.4") == "SC"
    assert kind_of("1.2.840.10008.5.1.4.1.1.2") is None  # CT is not a result kind


def test_slot_limits_concurrency_per_destination():
    inside, peak, lock, go = [0], [0], threading.Lock(), threading.Event()

    def work(name: str) -> None:
        with slot(name, 2):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            go.wait(30)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work, args=("pacs-a",)) for _ in range(5)]
    other = threading.Thread(target=work, args=("pacs-b",))  # its own limit
    for t in threads:
        t.start()
    assert wait_until(lambda: inside[0] == 2, 10)
    other.start()
    assert wait_until(lambda: inside[0] == 3, 10)  # pacs-b is not held up by pacs-a
    go.set()
    for t in [*threads, other]:
        t.join(30)
    assert peak[0] == 3 and inside[0] == 0


def _response(code: int, body: object | None = None) -> httpx.Response:
    req = httpx.Request("POST", "http://pacs/dicom-web/studies")
    return httpx.Response(code, json=body, request=req) if body is not None else \
        httpx.Response(code, request=req)


def _ref(uid: str, reason_tag: str | None = None, reason: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.66.4"]},
            "00081155": {"vr": "UI", "Value": [uid]}}
    if reason_tag:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


OUT = [stow.Outgoing("1.1", "9", bytes), stow.Outgoing("1.2", "9", bytes),
       stow.Outgoing("1.3", "9", bytes)]


def test_stow_202_per_instance():
    body = {"00081199": {"vr": "SQ", "Value": [_ref("1.1"), _ref("1.2", "00081196", 0xB000)]},
            "00081198": {"vr": "SQ", "Value": [_ref("1.3", "00081197", 0xA700)]}}
    items = stow._parse(_response(202, body), OUT, 4)
    assert [(items[u].status, classify(items[u].status)) for u in ("1.1", "1.2", "1.3")] == [
        (0, "delivered"), (0xB000, "delivered"), (0xA700, "retry")]
    assert "Failure Reason 0xA700" in items["1.3"].detail and items["1.3"].attempts == 4


def test_stow_200_409_and_unmentioned():
    assert {i.status for i in stow._parse(_response(200), OUT, 1).values()} == {0}
    partial = {"00081199": {"vr": "SQ", "Value": [_ref("1.1")]}}
    items = stow._parse(_response(200, partial), OUT, 1)
    assert items["1.1"].status == 0 and items["1.2"].status == -200
    assert classify(items["1.2"].status) == "retry" and "does not mention" in items["1.2"].detail
    conflict = {"00081198": {"vr": "SQ", "Value": [_ref("1.1", "00081197", 0xA900)]}}
    items = stow._parse(_response(409, conflict), OUT, 1)
    assert items["1.1"].status == 0xA900 and items["1.2"].status == -409
    assert "conflict" in items["1.2"].detail
    items = stow._parse(_response(503), OUT, 1)
    assert classify(items["1.1"].status) == "retry"


def test_stow_200_listing_nothing_stored_nothing():
    """Orthanc answers 200 with both sequences empty when it ignored every part: not stored."""
    empty = {"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ"}}
    items = stow._parse(_response(200, empty), OUT, 1)
    assert {i.status for i in items.values()} == {-200}
    assert all("does not mention" in i.detail for i in items.values())
