"""Superseded results with real PACS peers: a re-run on new content withdraws the old results.

Two destinations of one rule: Orthanc (profile ``all``, ``supersede = "iocm"``) and dcmtk's
storescp (profile ``legacy``: SC, GSPS, KOS, PDF; ``supersede = "version"``).  dcmtk's storescu
is the modality.  The first job's results — SEG, SR, SC, GSPS, KOS, PDF — are stored by Orthanc
and received by storescp.  Then the missing last slice arrives: the chosen series changed, a
second job runs, and

* Orthanc receives an IOCM rejection note (KOS, 113001 "Rejected for Quality Reasons") listing
  exactly the first job's objects it had acknowledged, each with its series, in the study;
* storescp (supersede = "version") receives no rejection note;
* the new SR names the old SR in its Predecessor Documents Sequence;
* the job log says what was withdrawn; the old job is superseded.
"""

from __future__ import annotations

import io
import time

import pydicom
import pytest

from tests.dimse_peers import Orthanc, have, wait_until
from tests.integration.test_pipeline_faults import FAST_RETRY, StoreSCP, storescu
from tests.pipeline_helpers import Platform, demo_ct, platform_config, wait_jobs

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("Orthanc", "storescu", "storescp"),
                                 reason="Orthanc or dcmtk missing")]

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def _orthanc_instances(orthanc: Orthanc) -> dict[str, pydicom.Dataset]:
    out = {}
    for iid in orthanc.rest("/instances"):
        ds = pydicom.dcmread(io.BytesIO(orthanc.rest_bytes(f"/instances/{iid}/file")))
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _received(pacs: StoreSCP) -> dict[str, pydicom.Dataset]:
    return {str(d.SOPInstanceUID): d for d in
            (pydicom.dcmread(f, stop_before_pixels=True) for f in pacs.folder.iterdir()
             if f.is_file())}


def _uids(job: dict, *kinds: str) -> set[str]:
    return {r["sop_instance_uid"] for r in job["results"]
            if not kinds or r["kind"].split("-")[0] in kinds}


def _title(ds: pydicom.Dataset) -> str:
    return str(ds.ConceptNameCodeSequence[0].CodeValue)


def test_rerun_withdraws_old_results_by_iocm_and_names_the_predecessor(tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc").start()
    legacy = StoreSCP(tmp_path / "storescp").start()
    platform = None
    try:
        dests = {
            "pacs": {"kind": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1",
                     "port": orthanc.dicom_port, "profile": "all", "supersede": "iocm",
                     "retry": dict(FAST_RETRY)},
            "legacy": {"kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1",
                       "port": legacy.port, "profile": "legacy", "supersede": "version",
                       "retry": dict(FAST_RETRY)},
        }
        cfg = platform_config(tmp_path / "hf", destinations=dests)
        platform = Platform(cfg).start()
        files, case = demo_ct(tmp_path / "ct", seed=12, patient="SUPERSEDE^TEST")
        study = str(case.ct.datasets[0].StudyInstanceUID)
        storescu(platform.dicom_port, files[:-1])  # the last slice comes later

        first = wait_jobs(cfg, lambda js: js and js[0]["state"] in ("done", "failed", "dead"),
                          timeout=300)[0]
        assert first["state"] == "done", (first, platform.text()[-3000:])
        kinds = {r["kind"].split("-")[0] for r in first["results"]}
        assert {"SR", "SC", "PDF", "KOS"} <= kinds, first["results"]
        if first["n_findings"]:
            assert {"SEG", "GSPS"} <= kinds
        # Orthanc stores every kind; storescp receives the legacy ones
        assert wait_until(lambda: _uids(first) <= set(_orthanc_instances(orthanc)), timeout=60)
        got = _orthanc_instances(orthanc)
        for uid in _uids(first):
            assert got[uid].StudyInstanceUID == study
            assert "AI" in got[uid].SeriesDescription
        (old_kos,) = [got[u] for u in _uids(first, "KOS")]
        assert _title(old_kos) == "113000"
        legacy_first = _uids(first, "SC", "GSPS", "KOS", "PDF")
        assert wait_until(lambda: legacy_first <= set(_received(legacy)), timeout=60)
        assert not _uids(first, "SEG", "SR") & set(_received(legacy))

        # new content in the chosen series: a re-run whose results replace the first
        storescu(platform.dicom_port, files[-1:])
        jobs = wait_jobs(cfg, lambda js: len(js) == 2 and js[0]["state"] in
                         ("done", "failed", "dead"), timeout=300)
        new, old = jobs
        assert new["state"] == "done", (new, platform.text()[-3000:])
        assert old["state"] == "superseded" and old["superseded_by"] == new["id"]
        new_results = _uids(new) - _uids(new, "REJECTION")
        assert new_results.isdisjoint(_uids(first))

        # Orthanc (iocm) got a rejection note for exactly the old objects it acknowledged
        (note_ref,) = [r for r in new["results"] if r["kind"] == "REJECTION"]
        assert note_ref["destination"] == "pacs"
        assert sorted(note_ref["rejects"]) == sorted(_uids(first))
        assert wait_until(lambda: note_ref["sop_instance_uid"] in _orthanc_instances(orthanc),
                          timeout=60)
        got = _orthanc_instances(orthanc)
        note = got[note_ref["sop_instance_uid"]]
        assert note.SOPClassUID == KOS and _title(note) == "113001"
        assert note.ConceptNameCodeSequence[0].CodeMeaning == "Rejected for Quality Reasons"
        assert note.StudyInstanceUID == study
        listed = {str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for it in note.ContentSequence if it.ValueType in ("IMAGE", "COMPOSITE")}
        assert listed == _uids(first)
        series_of = {str(se.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID)
                                                 for i in se.ReferencedSOPSequence}
                     for st in note.CurrentRequestedProcedureEvidenceSequence
                     for se in st.ReferencedSeriesSequence}
        for r in first["results"]:
            assert r["sop_instance_uid"] in series_of[r["series_instance_uid"]]

        # the new SR names the old one (both destinations' mode: where the standard allows)
        (new_sr,) = [got[u] for u in _uids(new, "SR")]
        (pred,) = new_sr.PredecessorDocumentsSequence
        assert pred.StudyInstanceUID == study
        (old_sr_ref,) = [r for r in first["results"] if r["kind"] == "SR"]
        (se,) = pred.ReferencedSeriesSequence
        assert se.SeriesInstanceUID == old_sr_ref["series_instance_uid"]
        assert [i.ReferencedSOPInstanceUID for i in se.ReferencedSOPSequence] == \
            [old_sr_ref["sop_instance_uid"]]

        # storescp (supersede = "version"): the new legacy objects, no rejection note
        legacy_new = _uids(new, "SC", "GSPS", "KOS", "PDF")
        assert wait_until(lambda: legacy_new <= set(_received(legacy)), timeout=60)
        time.sleep(1)
        notes = [d for d in _received(legacy).values()
                 if d.SOPClassUID == KOS and _title(d) == "113001"]
        assert notes == []

        # the job log says what was withdrawn
        text = "\n".join(new["log"])
        assert f"pacs: withdrew {len(_uids(first))} superseded object(s)" in text, text
        assert "legacy: withdrew" not in text
    finally:
        if platform:
            rc = platform.stop()
            assert rc == 0, platform.text()[-3000:]
        legacy.stop()
        orthanc.stop()
