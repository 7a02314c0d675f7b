"""PACS-compatibility profiles against real peers.

A strict legacy PACS: dcmtk's ``storescp`` restricted (``-xf storescp.cfg StrictLegacy``) to CT,
Secondary Capture, Key Object Selection, Grayscale Softcopy Presentation State and Encapsulated
PDF storage, uncompressed only — it shows neither SEG nor SR.  The pipeline (``hounsfield
serve``) routes a chest CT by a rule whose profile is ``ai-ready`` to two destinations on that
storescp: ``legacy-pacs`` (profile ``legacy``) gets its SC / GSPS / KOS / PDF built anyway and
receives every one of them with nothing refused (its pre-flight: all accepted);
``modern-pacs`` (profile ``ai-ready``) has SEG and SR refused in its pre-flight warning, its
delivery log and the job log, without a crash of either side.

Transfer syntaxes on the wire: a profile naming RLE Lossless or Implicit VR Little Endian
makes storescp receive exactly that (converted from the stored Explicit VR Little Endian); a
profile naming only a syntax we cannot encode is a permanent failure with the reason; STOW-RS
into Orthanc sends the first listed syntax.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless
from sqlalchemy import select

from hounsfield.dicom import status as st
from hounsfield.pacs import preflight
from hounsfield.pacs.models import Delivery
from hounsfield.pacs.profiles import RESULT_SOP_CLASSES
from tests.dimse_peers import PEER_ENV, Orthanc, have
from tests.helpers import free_port, wait_port
from tests.pipeline_helpers import ROOT, Platform, demo_ct, open_archive, platform_config, wait_jobs

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("storescp", "storescu"), reason="dcmtk missing")]

#: a strict legacy PACS: CT, SC, KOS, GSPS and PDF, uncompressed (storescp -xf FILE StrictLegacy)
STRICT_CFG = r"""
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[StrictLegacy]
PresentationContext1 = VerificationSOPClass\Uncompressed
PresentationContext2 = CTImageStorage\Uncompressed
PresentationContext3 = SecondaryCaptureImageStorage\Uncompressed
PresentationContext4 = KeyObjectSelectionDocumentStorage\Uncompressed
PresentationContext5 = GrayscaleSoftcopyPresentationStateStorage\Uncompressed
PresentationContext6 = EncapsulatedPDFStorage\Uncompressed

[[Profiles]]
[StrictLegacy]
PresentationContexts = StrictLegacy
"""
LEGACY_KINDS = {"SC", "GSPS", "KOS", "PDF"}


class StoreSCP:
    """dcmtk's storescp (TCP_NODELAY=1) on a free port, keeping every file it receives."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder, self.args, self.port = folder, args, free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "STRICT", "-od", str(self.folder), *self.args, str(self.port)],
            env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=30)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            self.proc.wait(30)

    def received(self) -> dict[str, pydicom.Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in
                (pydicom.dcmread(f, stop_before_pixels=True) for f in self.folder.iterdir()
                 if f.is_file())}


def strict_pacs(tmp_path: Path) -> StoreSCP:
    cfg = tmp_path / "storescp.cfg"
    cfg.write_text(STRICT_CFG)
    return StoreSCP(tmp_path / "strict-in", "-xf", str(cfg), "StrictLegacy").start()


def storescu(port: int, files: list[Path]) -> None:
    r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "HOUNSFIELD", "127.0.0.1",
                        str(port), *map(str, files)], env=PEER_ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hounsfield.cli", "--config", str(config), *args],
                          env={**PEER_ENV, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
                          capture_output=True, text=True, timeout=120)


def test_strict_legacy_pacs_gets_the_legacy_profile_and_refuses_seg_sr(tmp_path):
    pacs = strict_pacs(tmp_path)
    dest = {"kind": "dimse", "ae_title": "STRICT", "host": "127.0.0.1", "port": pacs.port}
    cfg = platform_config(tmp_path / "hf", profile="ai-ready", destinations={
        "legacy-pacs": {**dest, "profile": "legacy"},
        "modern-pacs": {**dest, "profile": "ai-ready"}})
    platform = Platform(cfg).start()
    try:
        files, _case = demo_ct(tmp_path / "ct", seed=17, patient="STRICT^LEGACY")
        storescu(platform.dicom_port, files)
        jobs = wait_jobs(cfg, lambda js: js and js[0]["state"] in ("done", "failed", "dead"),
                         timeout=300)
        job = jobs[0]
        log = "\n".join(job["log"])
        # the rule says ai-ready; the legacy destination's kinds are built too
        by_kind: dict[str, set[str]] = {}
        for r in job["results"]:
            by_kind.setdefault(r["kind"].split("-")[0], set()).add(r["sop_instance_uid"])
        assert {"SEG", "SR", "SC"} <= set(by_kind), (job["results"], log)
        assert LEGACY_KINDS <= set(by_kind), (sorted(by_kind), log)
        legacy_sops = set().union(*(by_kind[k] for k in LEGACY_KINDS))
        # every legacy object landed in storescp's folder; SEG and SR never did
        got = pacs.received()
        assert legacy_sops and legacy_sops <= set(got), (sorted(got), log)
        assert not (by_kind["SEG"] | by_kind["SR"]) & set(got)
        assert {str(got[u].SOPClassUID) for u in legacy_sops} == {
            RESULT_SOP_CLASSES[k] for k in LEGACY_KINDS}
        # modern-pacs refused SEG and SR: the job is dead with that reason, nothing crashed
        assert job["state"] == "dead", log
        assert "modern-pacs" in job["error"] and "Segmentation Storage" in job["error"]
        assert "modern-pacs: pre-flight warning: the profile 'ai-ready' sends SEG" in log
        assert "legacy-pacs: attempt 1: " in log and "legacy-pacs: pre-flight" not in log
        assert pacs.alive() and platform.proc.poll() is None

        archive = open_archive(cfg)
        try:
            ok = preflight.latest(archive, "legacy-pacs")
            assert ok.outcome == "ok" and ok.refused == [] and ok.warnings == []
            assert {a["kind"] for a in ok.accepted} == LEGACY_KINDS
            bad = preflight.latest(archive, "modern-pacs")
            assert bad.outcome == "warnings"
            assert {r["kind"] for r in bad.refused} == {"SEG", "SR"} and bad.accepted == []
            assert len(bad.warnings) == 2 and all("STRICT@127.0.0.1" in w for w in bad.warnings)
            with archive.session() as s:
                rows = s.scalars(select(Delivery).where(Delivery.destination == "modern-pacs")).all()
                legacy_rows = s.scalars(select(Delivery).where(
                    Delivery.destination == "legacy-pacs")).all()
            assert {r.sop_instance_uid for r in rows} == by_kind["SEG"] | by_kind["SR"]
            assert all(r.status == st.SOP_CLASS_NOT_SUPPORTED for r in rows)
            assert all("refused the presentation context" in r.detail
                       and "the pre-flight found it refused too" in r.detail for r in rows)
            assert {r.sop_instance_uid for r in legacy_rows if r.status == st.SUCCESS} == legacy_sops
        finally:
            archive.close()

        # on demand, from the command line: exit 0 for all accepted, 1 with the refusals
        r = cli(cfg, "destinations", "preflight", "legacy-pacs", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["outcome"] == "ok"
        r = cli(cfg, "destinations", "preflight", "modern-pacs")
        assert r.returncode == 1 and "refused" in r.stdout and "Segmentation" in r.stdout
        r = cli(cfg, "destinations", "preflight", "nowhere")
        assert r.returncode == 2 and "unknown export destination 'nowhere'" in r.stderr
    finally:
        platform.stop()
        pacs.stop()
    _console_shows_the_warnings(cfg)


def _console_shows_the_warnings(cfg: Path) -> None:
    """The console's destinations page and API on the same data directory."""
    from fastapi.testclient import TestClient

    from hounsfield.web import auth
    from hounsfield.web.app import create_app

    archive = open_archive(cfg)
    try:
        auth.create_user(archive, "eng", "admin", None)
        auth.create_user(archive, "rad", "radiologist", None)
        tok = {u: {"Authorization": f"Bearer {auth.issue_token(archive, u, days=1)[0]}"}
               for u in ("eng", "rad")}
        with TestClient(create_app(archive.settings, archive)) as c:
            r = c.get("/destinations", headers=tok["rad"])
            assert r.status_code == 200
            assert 'href="/destinations"' in r.text and "legacy-pacs" in r.text
            assert r.text.count("preflight-warning") == 2
            assert "sends SEG (Segmentation Storage)" in r.text and "Run pre-flight" not in r.text
            rows = {d["name"]: d for d in c.get("/api/destinations", headers=tok["rad"]).json()}
            assert rows["legacy-pacs"]["preflight"]["outcome"] == "ok"
            assert rows["modern-pacs"]["kinds"] == ["SEG", "SR"]
            assert rows["legacy-pacs"]["transfer_syntaxes"][0]["uid"] == ExplicitVRLittleEndian
            assert len(rows["modern-pacs"]["warnings"]) == 2
            # the PACS is gone now: asking again records it unreachable
            r = c.post("/api/destinations/legacy-pacs/preflight", headers=tok["rad"])
            assert r.status_code == 403
            r = c.post("/api/destinations/legacy-pacs/preflight", headers=tok["eng"])
            assert r.status_code == 200 and r.json()["outcome"] == "unreachable"
            assert c.post("/api/destinations/nope/preflight", headers=tok["eng"]).status_code == 404
            r = c.get("/destinations", headers=tok["eng"])
            assert "Run pre-flight" in r.text and "unreachable" in r.text
    finally:
        archive.close()


# -- transfer syntaxes on the wire -------------------------------------------------------------
def _archive_with_results(tmp_path: Path, destinations: dict, profiles: dict):  # noqa: ANN202
    from hounsfield.archive import Archive
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances
    from hounsfield.config import load_settings
    from tests.integration.test_export import sc_of
    from tests.web_data import ct_series, sr_of, to_bytes

    settings = load_settings(data_dir=tmp_path / "var", profile="demo", fsync=False,
                             dicom={"port": 0, "acse_timeout_s": 5},
                             export={"destinations": destinations, "profiles": profiles})
    archive = Archive.open(settings)
    cts = ct_series(4, 32, seed=f"profiles-{tmp_path.name}")
    objs = {"SC": sc_of(cts), "SR": sr_of(cts)}
    out = store_instances(archive, [parse_part10(to_bytes(d), name=k) for k, d in objs.items()],
                          source="test")
    assert all(o.status == "stored" for o in out), out
    return archive, {k: str(d.SOPInstanceUID) for k, d in objs.items()}


def test_profile_transfer_syntaxes_reach_storescp(tmp_path):
    from hounsfield.pacs.export import deliver

    rle = StoreSCP(tmp_path / "rle", "+xr").start()    # prefers RLE Lossless, takes uncompressed
    plain = StoreSCP(tmp_path / "plain").start()      # uncompressed only (storescp's default)
    base = {"kind": "dimse", "ae_title": "STRICT", "host": "127.0.0.1"}
    archive, uid = _archive_with_results(tmp_path, {
        "rle": {**base, "port": rle.port, "profile": "rle"},
        "implicit": {**base, "port": plain.port, "profile": "all",
                     "transfer_syntaxes": [ImplicitVRLittleEndian]},
        "rle-only": {**base, "port": plain.port, "profile": "rle", "transfer_syntaxes": [RLELossless]},
    }, {"rle": {"objects": ["SC", "SR"], "transfer_syntaxes": [RLELossless, ExplicitVRLittleEndian]}})
    try:
        both = [uid["SC"], uid["SR"]]
        report = deliver(archive, both, "rle")
        assert report.ok, [(i.status, i.detail) for i in report.items]
        got = {u: pydicom.dcmread(f) for f in (tmp_path / "rle").iterdir()
               for u in [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)]}
        # converted into the profile's first syntax; the SR (no pixels) in it as well
        assert got[uid["SC"]].file_meta.TransferSyntaxUID == RLELossless
        assert got[uid["SC"]].pixel_array.shape[-1] == 3
        sc_item = next(i for i in report.items if i.sop_instance_uid == uid["SC"])
        assert sc_item.detail.startswith("transcoded ") and "-> RLE Lossless" in sc_item.detail

        report = deliver(archive, both, "implicit")
        assert report.ok, [(i.status, i.detail) for i in report.items]
        for f in (tmp_path / "plain").iterdir():
            assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

        # storescp takes no RLE: both refused with the syntaxes offered, permanently
        report = deliver(archive, both, "rle-only")
        assert {i.outcome for i in report.items} == {"dead"}
        assert all("in RLE Lossless" in i.detail for i in report.items), report.items
        assert report.warnings and "refuses" in report.warnings[0]

    finally:
        rle.stop()
        plain.stop()
        archive.close()


def test_an_unencodable_syntax_is_a_permanent_failure_with_the_reason(tmp_path):
    from hounsfield.pacs.delivery import NOT_PREPARED
    from hounsfield.pacs.export import deliver

    scp = StoreSCP(tmp_path / "any", "+xa").start()   # accepts every syntax it knows
    archive, uid = _archive_with_results(tmp_path, {
        "jpeg": {"kind": "dimse", "ae_title": "STRICT", "host": "127.0.0.1", "port": scp.port,
                 "profile": "sc", "transfer_syntaxes": ["1.2.840.10008.1.2.4.50"]}},
        {"sc": {"objects": ["SC"]}})
    try:
        report = deliver(archive, [uid["SC"]], "jpeg")
        (item,) = report.items
        assert item.outcome == "dead" and item.status == NOT_PREPARED
        assert "no lossless encoder for JPEG Baseline" in item.detail
        assert scp.alive() and not list((tmp_path / "any").iterdir())
    finally:
        scp.stop()
        archive.close()


@pytest.mark.skipif(not have("Orthanc"), reason="Orthanc not installed")
def test_stow_rs_sends_the_first_listed_syntax(tmp_path):
    from hounsfield.pacs.export import deliver

    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)
    orthanc.start()
    try:
        archive, uid = _archive_with_results(tmp_path, {
            "web": {"kind": "stowrs", "url": orthanc.dicomweb_url, "profile": "sc-ls"}},
            {"sc-ls": {"objects": ["SC"], "transfer_syntaxes": [JPEGLSLossless]}})
        try:
            report = deliver(archive, [uid["SC"], uid["SR"]], "web")
            assert report.ok and report.excluded == [uid["SR"]], report.items
            (iid,) = orthanc.rest("/instances")
            assert orthanc.rest_bytes(f"/instances/{iid}/metadata/TransferSyntax").decode() \
                == JPEGLSLossless
            ds = pydicom.dcmread(io.BytesIO(orthanc.rest_bytes(f"/instances/{iid}/file")))
            assert ds.SOPInstanceUID == uid["SC"] and ds.pixel_array.shape[-1] == 3
            assert preflight.ensure(archive, "web").outcome == "not checkable"
        finally:
            archive.close()
    finally:
        orthanc.stop()


def test_preflight_warns_when_the_pacs_cannot_commit(tmp_path):
    """A profile waiting for Storage Commitment, a PACS without the Push Model SOP Class."""
    from hounsfield.archive import Archive
    from hounsfield.config import load_settings

    pacs = strict_pacs(tmp_path)
    settings = load_settings(data_dir=tmp_path / "var", profile="demo", export={"destinations": {
        "committed": {"kind": "dimse", "ae_title": "STRICT", "host": "127.0.0.1",
                      "port": pacs.port, "profile": "legacy", "storage_commitment": True}}})
    archive = Archive.open(settings)
    try:
        r = preflight.run(archive, "committed", actor="engineer")
        assert r.outcome == "warnings" and r.actor == "engineer"
        assert {a["kind"] for a in r.accepted} == LEGACY_KINDS
        assert [x["kind"] for x in r.refused] == ["commitment"]
        assert r.refused[0]["sop_class_uid"] == "1.2.840.10008.1.20.1"
        (w,) = r.warnings
        assert "waits for Storage Commitment" in w and "cannot be committed" in w
        assert preflight.latest(archive, "committed").warnings == [w]
        assert pacs.alive()
    finally:
        pacs.stop()
        archive.close()
