"""Export of results (SEG, Comprehensive 3D SR, SC) to real peers: Orthanc as C-STORE and
STOW-RS destination (HTTP basic auth), dcmtk's storescp; and the faults — the PACS stopped and
started again (everything once, nothing twice), nothing listening, a SOP class refused, a
wrong password, association rejected, a STOW endpoint answering 500 then 200."""

from __future__ import annotations

import http.server
import subprocess
import threading
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.dicom import status as st
from hounsfield.pacs.delivery import NO_ASSOCIATION
from hounsfield.pacs.export import deliver, pending
from hounsfield.pacs.models import Delivery
from tests.dimse_peers import PEER_ENV, Orthanc, have
from tests.helpers import free_port, wait_port
from tests.web_data import ct_series, seg_of, sr_of, to_bytes

pytestmark = [pytest.mark.peers,
              pytest.mark.skipif(not have("Orthanc", "storescp"),
                                 reason="Orthanc / dcmtk not installed")]

SEG, SR, SC = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34",
               "1.2.840.10008.5.1.4.1.1.7")


def sc_of(cts) -> pydicom.Dataset:  # noqa: ANN001
    """A highdicom Secondary Capture key image (RGB) of the middle slice."""
    import highdicom as hd

    from hounsfield.dicom.uids import derived_uid

    ref = cts[len(cts) // 2]
    grey = ((ref.pixel_array.astype(np.float32) + 1000) / 1800 * 255).clip(0, 255)
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    rgb[0:4, :, 0] = 255  # a burned-in red band
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=derived_uid(ref.SeriesInstanceUID, "sc"),
        series_number=4, sop_instance_uid=derived_uid(ref.SeriesInstanceUID, "sc-1"),
        instance_number=1, manufacturer="Hounsfield", pixel_spacing=(1.0, 1.0),
        patient_orientation=("L", "P"))


def make_archive(tmp_path: Path, destinations: dict) -> tuple[Archive, dict[str, str]]:
    """An archive with a CT series and its SEG, SR and SC; returns it and kind -> SOP UID."""
    settings = load_settings(data_dir=tmp_path / "var", profile="demo", fsync=False,
                             dicom={"port": 0, "acse_timeout_s": 5, "dimse_timeout_s": 20,
                                    "network_timeout_s": 20},
                             export={"destinations": destinations})
    archive = Archive.open(settings)
    cts = ct_series(4, 32, seed=f"export-{tmp_path.name}")
    objs = {"CT": cts[0], "SEG": seg_of(cts), "SR": sr_of(cts), "SC": sc_of(cts)}
    parsed = [parse_part10(to_bytes(ds), name=k) for k, ds in objs.items()]
    out = store_instances(archive, parsed, source="test")
    assert all(o.status == "stored" for o in out), out
    return archive, {k: str(ds.SOPInstanceUID) for k, ds in objs.items()}


def orthanc_sops(orthanc: Orthanc) -> list[str]:
    return [orthanc.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
            for i in orthanc.rest("/instances")]


def acked_rows(archive: Archive, dest: str) -> list[str]:
    """SOP UIDs of the acknowledged delivery-log rows for ``dest`` (repeats kept)."""
    with archive.session() as s:
        rows = s.scalars(select(Delivery).where(Delivery.destination == dest)).all()
    return sorted(r.sop_instance_uid for r in rows if st.is_success(r.status)
                  or st.is_warning(r.status))


def outcomes(report) -> dict[str, str]:  # noqa: ANN001
    return {i.sop_instance_uid: i.outcome for i in report.items}


@pytest.fixture
def orthanc(tmp_path):
    o = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"hf": "s3cret-pw"},
                extra={"UnknownSopClassAccepted": False})
    o.start()
    yield o
    o.stop()


def dimse(o: Orthanc, **kw) -> dict:
    return {"kind": "dimse", "ae_title": o.aet, "host": "127.0.0.1", "port": o.dicom_port, **kw}


def stowrs(o: Orthanc, **kw) -> dict:
    return {"kind": "stowrs", "url": o.dicomweb_url, "username": "hf", "password": "s3cret-pw",
            **kw}


# -- C-STORE -------------------------------------------------------------------------------
def test_c_store_seg_sr_sc_into_orthanc_once(orthanc, tmp_path):
    archive, uid = make_archive(tmp_path, {"pacs": dimse(orthanc, profile="all")})
    try:
        report = deliver(archive, list(uid.values()), "pacs")
        assert report.operation == "C-STORE" and report.ok, [(i.status, i.detail)
                                                             for i in report.items]
        assert outcomes(report) == {uid[k]: "delivered" for k in ("SEG", "SR", "SC")}
        assert report.excluded == [uid["CT"]] and "profile all" in report.notes[0]
        assert sorted(orthanc_sops(orthanc)) == sorted(uid[k] for k in ("SEG", "SR", "SC"))
        classes = {orthanc.rest(f"/instances/{i}/simplified-tags")["SOPClassUID"]
                   for i in orthanc.rest("/instances")}
        assert classes == {SEG, SR, SC}
        # the same export again: nothing sent, nothing logged twice
        again = deliver(archive, list(uid.values()), "pacs", attempt=1)
        assert not again.items and sorted(again.skipped) == sorted(uid[k] for k in
                                                                   ("SEG", "SR", "SC"))
        assert acked_rows(archive, "pacs") == sorted(uid[k] for k in ("SEG", "SR", "SC"))
        assert pending(archive, uid.values(), "pacs") == [uid["CT"]]
        with archive.session() as s:
            from hounsfield.audit import query as audit_query

            assert any(e.action == "EXPORT" and e.destination == "pacs"
                       for e in audit_query(s, limit=20))
    finally:
        archive.close()


def test_pacs_down_then_back_receives_everything_once(orthanc, tmp_path):
    """Orthanc stopped during export, then started again (issue 16 faults)."""
    archive, uid = make_archive(tmp_path, {"pacs": dimse(orthanc, profile="all")})
    results = [uid["SEG"], uid["SR"], uid["SC"]]
    try:
        first = deliver(archive, [uid["SEG"]], "pacs")
        assert first.ok
        orthanc.stop()
        down = deliver(archive, results, "pacs", attempt=1)
        assert down.skipped == [uid["SEG"]]
        assert outcomes(down) == {uid["SR"]: "retry", uid["SC"]: "retry"}
        assert all(i.status == NO_ASSOCIATION and "cannot connect" in i.detail
                   for i in down.items), [i.detail for i in down.items]
        assert pending(archive, results, "pacs") == [uid["SR"], uid["SC"]]
        down2 = deliver(archive, results, "pacs", attempt=2)
        assert [i.outcome for i in down2.items] == ["retry", "retry"]
        orthanc.start()  # same ports, same storage
        back = deliver(archive, results, "pacs", attempt=3)
        assert outcomes(back) == {uid["SR"]: "delivered", uid["SC"]: "delivered"}
        assert all(i.attempts == 3 for i in back.items)
        assert back.skipped == [uid["SEG"]]
        assert sorted(orthanc_sops(orthanc)) == sorted(results)
        assert acked_rows(archive, "pacs") == sorted(results)  # each acknowledged once
        assert pending(archive, results, "pacs") == []
    finally:
        archive.close()


def test_association_rejected_permanently_is_dead(tmp_path):
    o = Orthanc(tmp_path / "orthanc", extra={"DicomCheckCalledAet": True})
    o.start()
    archive, uid = make_archive(tmp_path, {"wrong-ae": dimse(o, ae_title="NOT-ORTHANC",
                                                             profile="legacy")})
    try:
        report = deliver(archive, [uid["SC"]], "wrong-ae")
        [item] = report.items
        assert item.outcome == "dead" and "rejected" in item.detail, item.detail
        assert o.rest("/instances") == []
    finally:
        archive.close()
        o.stop()


def test_nothing_listening_retries_then_dead(tmp_path):
    port = free_port()
    archive, uid = make_archive(tmp_path, {
        "gone": {"kind": "dimse", "ae_title": "NOBODY", "host": "127.0.0.1", "port": port,
                 "retry": {"max_attempts": 3}},
        "gone-web": {"kind": "stowrs", "url": f"http://127.0.0.1:{port}/dicom-web",
                     "token": "t0ken", "retry": {"max_attempts": 3}}})
    try:
        for name in ("gone", "gone-web"):
            r1 = deliver(archive, [uid["SEG"], uid["SR"]], name, attempt=1)
            assert [i.outcome for i in r1.items] == ["retry", "retry"], r1.items
            assert all(i.status == NO_ASSOCIATION for i in r1.items)
            r3 = deliver(archive, [uid["SEG"], uid["SR"]], name, attempt=3)
            assert [i.outcome for i in r3.items] == ["dead", "dead"]
            assert r3.items[0].detail.startswith("gave up after 3 attempts: ")
            assert pending(archive, [uid["SEG"], uid["SR"]], name) == [uid["SEG"], uid["SR"]]
    finally:
        archive.close()


# -- dcmtk storescp ----------------------------------------------------------------------
STORESCP_CFG = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = LittleEndianImplicit

[[PresentationContexts]]
[CTOnly]
PresentationContext1 = CTImageStorage\\Uncompressed
[SROnly]
PresentationContext1 = Comprehensive3DSRStorage\\Uncompressed

[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
[SROnly]
PresentationContexts = SROnly
"""


def storescp(folder: Path, port: int, *extra: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(folder), *extra, str(port)],
                         env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def test_storescp_receives_seg_sr_sc(tmp_path):
    port = free_port()
    archive, uid = make_archive(tmp_path, {"dcmtk": {"kind": "dimse", "ae_title": "DEST",
                                                     "host": "127.0.0.1", "port": port,
                                                     "profile": "all"}})
    scp = storescp(tmp_path / "in", port)
    try:
        report = deliver(archive, [uid["SEG"], uid["SR"], uid["SC"]], "dcmtk")
        assert report.ok, [(i.status, i.detail) for i in report.items]
    finally:
        scp.terminate()
        scp.wait(10)
        archive.close()
    got = {str(pydicom.dcmread(p).SOPClassUID) for p in (tmp_path / "in").iterdir()}
    assert got == {SEG, SR, SC}


def test_refused_sop_classes_are_dead_with_the_reason(tmp_path):
    cfg = tmp_path / "storescp.cfg"
    cfg.write_text(STORESCP_CFG)
    port = free_port()
    archive, uid = make_archive(tmp_path, {"picky": {"kind": "dimse", "ae_title": "DEST",
                                                     "host": "127.0.0.1", "port": port,
                                                     "profile": "all"}})
    results = [uid["SEG"], uid["SR"], uid["SC"]]
    try:
        # accepts only CT: no context at all for SEG / SR / SC
        scp = storescp(tmp_path / "ct-only", port, "-xf", str(cfg), "CTOnly")
        try:
            report = deliver(archive, results, "picky")
        finally:
            scp.terminate()
            scp.wait(10)
        assert {i.outcome for i in report.items} == {"dead"}
        assert all(i.status == st.SOP_CLASS_NOT_SUPPORTED and "Segmentation Storage"
                   in i.detail for i in report.items), [i.detail for i in report.items]
        # accepts only Comprehensive 3D SR: the SR goes, SEG and SC are refused
        scp = storescp(tmp_path / "sr-only", port, "-xf", str(cfg), "SROnly")
        try:
            report = deliver(archive, results, "picky", attempt=2)
        finally:
            scp.terminate()
            scp.wait(10)
        assert outcomes(report) == {uid["SEG"]: "dead", uid["SR"]: "delivered",
                                    uid["SC"]: "dead"}
        seg = next(i for i in report.items if i.sop_instance_uid == uid["SEG"])
        assert "refused the presentation context for Segmentation Storage" in seg.detail
        assert len(list((tmp_path / "sr-only").iterdir())) == 1
    finally:
        archive.close()


# -- STOW-RS -------------------------------------------------------------------------------
def test_stow_rs_with_basic_auth_into_orthanc(orthanc, tmp_path):
    archive, uid = make_archive(tmp_path, {
        "web": stowrs(orthanc),  # ai-ready: SEG + SR
        "web-bad": stowrs(orthanc, password="wrong"),
        "web-legacy": stowrs(orthanc, profile="legacy", max_instances_per_request=1)})
    everything = list(uid.values())
    try:
        bad = deliver(archive, everything, "web-bad")
        assert {i.outcome for i in bad.items} == {"dead"}
        assert all(i.status == -401 and "credentials refused" in i.detail for i in bad.items)
        assert orthanc.rest("/instances") == []

        report = deliver(archive, everything, "web")
        assert report.operation == "STOW-RS" and report.ok, [(i.status, i.detail)
                                                             for i in report.items]
        assert sorted(report.excluded) == sorted([uid["CT"], uid["SC"]])
        assert sorted(orthanc_sops(orthanc)) == sorted([uid["SEG"], uid["SR"]])
        assert not deliver(archive, everything, "web").items  # nothing twice

        legacy = deliver(archive, everything, "web-legacy")
        assert outcomes(legacy) == {uid["SC"]: "delivered"}
        assert sorted(orthanc_sops(orthanc)) == sorted([uid["SEG"], uid["SR"], uid["SC"]])
        # the password stays out of the log
        with archive.session() as s:
            assert not any("s3cret" in r.detail for r in s.scalars(select(Delivery)))
    finally:
        archive.close()


def test_stow_rs_pacs_down_then_back(orthanc, tmp_path):
    archive, uid = make_archive(tmp_path, {"web": stowrs(orthanc, profile="all")})
    results = [uid["SEG"], uid["SR"], uid["SC"]]
    try:
        orthanc.stop()
        down = deliver(archive, results, "web")
        assert [i.outcome for i in down.items] == ["retry"] * 3
        assert "cannot reach" in down.items[0].detail
        orthanc.start()
        back = deliver(archive, results, "web", attempt=2)
        assert back.ok and len(back.items) == 3
        assert sorted(orthanc_sops(orthanc)) == sorted(results)
        assert acked_rows(archive, "web") == sorted(results)
    finally:
        archive.close()


class FlakyProxy:
    """An HTTP front for Orthanc's DICOMweb that answers the first ``failures`` POSTs with
    500 and forwards everything else (with Orthanc's credentials); it demands a bearer token."""

    def __init__(self, orthanc: Orthanc, token: str, failures: int = 1) -> None:
        self.posts: list[int] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._answer(401, b"", "text/plain")
                    return
                proxy.posts.append(body.count(b"Content-Type: application/dicom"))
                if len(proxy.posts) <= failures:
                    self._answer(500, b"internal error (injected)", "text/plain")
                    return
                r = httpx.post(orthanc.dicomweb_url + self.path.removeprefix("/dicom-web"),
                               content=body, auth=("hf", "s3cret-pw"), timeout=60,
                               headers={"Content-Type": self.headers["Content-Type"],
                                        "Accept": "application/dicom+json"})
                self._answer(r.status_code, r.content,
                             r.headers.get("content-type", "application/dicom+json"))

            def _answer(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stow_rs_500_then_200(orthanc, tmp_path):
    proxy = FlakyProxy(orthanc, token="t0ken-42")
    archive, uid = make_archive(tmp_path, {
        "flaky": {"kind": "stowrs", "url": proxy.url, "token": "t0ken-42", "profile": "all"},
        "flaky-bad-token": {"kind": "stowrs", "url": proxy.url, "token": "nope"}})
    results = [uid["SEG"], uid["SR"], uid["SC"]]
    try:
        r1 = deliver(archive, results, "flaky", attempt=1)
        assert [(i.outcome, i.status) for i in r1.items] == [("retry", -500)] * 3
        assert "HTTP 500" in r1.items[0].detail and "injected" in r1.items[0].detail
        assert orthanc.rest("/instances") == []
        r2 = deliver(archive, results, "flaky", attempt=2)
        assert r2.ok and [i.outcome for i in r2.items] == ["delivered"] * 3
        assert sorted(orthanc_sops(orthanc)) == sorted(results)
        assert not deliver(archive, results, "flaky", attempt=3).items
        assert proxy.posts == [3, 3]  # one failed POST, one that stored all three; no third
        bad = deliver(archive, [uid["SEG"]], "flaky-bad-token")
        assert bad.dead and bad.items[0].status == -401
        assert proxy.posts == [3, 3]
    finally:
        proxy.close()
        archive.close()
