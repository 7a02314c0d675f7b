"""The clinical pipeline embedded in a hospital PACS, end to end, with Orthanc as the PACS.

Orthanc (Debian) receives a chest CT from a "modality" and, by its own Lua ``OnStableStudy``
rule, forwards the CT series to Hounsfield by C-STORE.  ``hounsfield serve`` (all roles, as a
subprocess) sees the study become stable, routes it by the rules file to the shipped demo
model (promoted to ``@production`` by an admin), runs it, builds SEG + Comprehensive 3D SR +
Secondary Capture + GSPS + KOS + Encapsulated PDF, and sends them back to Orthanc by C-STORE.  The test reads the results out
of Orthanc's REST API and checks they reference the right images and name the model; sending
the study again makes no second set of results.
"""

from __future__ import annotations

import io

import pydicom
import pytest

from tests.dimse_peers import Orthanc, have, wait_until
from tests.helpers import free_port
from tests.pipeline_helpers import Platform, demo_ct, jobs_of, platform_config, wait_jobs

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not have("Orthanc"), reason="Orthanc not installed")]

LUA = """
-- the hospital's routing rule: every stable study's CT series go to the AI node
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for i, s in pairs(series) do
    if s['MainDicomTags']['Modality'] == 'CT' then
      -- a C-STORE job of the whole series (Lua's SendToModality takes one instance)
      RestApiPost('/modalities/hounsfield/store', s['ID'])
    end
  end
end
"""


def _instances(orthanc: Orthanc) -> dict[str, pydicom.Dataset]:
    out = {}
    for iid in orthanc.rest("/instances"):
        raw = orthanc.rest_bytes(f"/instances/{iid}/file")
        ds = pydicom.dcmread(io.BytesIO(raw))
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_orthanc_forwards_a_ct_and_receives_seg_sr_sc_back(tmp_path):
    hf_port = free_port()
    lua = tmp_path / "route.lua"
    lua.write_text(LUA)
    orthanc = Orthanc(tmp_path / "orthanc",
                      modalities={"hounsfield": ("HOUNSFIELD", "127.0.0.1", hf_port)},
                      extra={"LuaScripts": [str(lua)], "StableAge": 2})
    orthanc.start()
    platform = None
    try:
        dest = {"pacs": {"kind": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1",
                         "port": orthanc.dicom_port, "profile": "all"}}
        cfg = platform_config(tmp_path / "hf", destinations=dest, dicom_port=hf_port)
        platform = Platform(cfg).start()
        files, case = demo_ct(tmp_path / "ct", seed=11, patient="ORTHANC^ROUNDTRIP")
        ct_sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in files}
        ct_series = str(case.ct.datasets[0].SeriesInstanceUID)
        orthanc.upload(files)  # the modality sends to the PACS

        jobs = wait_jobs(cfg, lambda js: any(j["state"] in ("done", "failed", "dead")
                                             for j in js), timeout=300)
        job = jobs[0]
        assert job["state"] == "done", (job, platform.text()[-3000:])
        assert job["series_instance_uid"] == ct_series
        assert job["model_version"].startswith("demo-nodules@")
        kinds = {r["kind"].split("-")[0] for r in job["results"]}
        assert kinds == {"SEG", "SR", "SC", "GSPS", "KOS", "PDF"}, job["results"]
        result_sops = {r["sop_instance_uid"] for r in job["results"]}

        # the results are in the PACS, referencing the CT they were computed from
        assert wait_until(lambda: result_sops <= set(_instances(orthanc)), timeout=60), \
            "results never arrived in Orthanc"
        got = _instances(orthanc)
        device_uid = job["device_uid"]
        by_class = {}
        for uid in result_sops:
            ds = got[uid]
            by_class.setdefault(ds.SOPClassUID.name, []).append(ds)
            assert "AI" in ds.SeriesDescription
            assert ds.StudyInstanceUID == case.ct.datasets[0].StudyInstanceUID
            # acquisition equipment (the CT), the model, and highdicom (the library)
            (eq,) = [e for e in ds.ContributingEquipmentSequence if e.get("DeviceUID")]
            assert eq.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # processing
            assert eq.DeviceUID == device_uid
            assert eq.ManufacturerModelName == "demo-nodules"
        (seg,) = by_class["Segmentation Storage"]
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_series
        refs = {r.ReferencedSOPInstanceUID
                for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert refs and refs <= ct_sops
        (sr,) = by_class["Comprehensive 3D SR Storage"]
        assert sr.VerificationFlag == "UNVERIFIED"
        ev = {i.ReferencedSOPInstanceUID
              for st in sr.CurrentRequestedProcedureEvidenceSequence
              for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert ev & ct_sops and seg.SOPInstanceUID in ev
        scs = by_class["Secondary Capture Image Storage"]
        assert len(scs) == max(1, job["n_findings"])
        for sc in scs:
            assert sc.BurnedInAnnotation == "YES"
            if job["n_findings"]:
                assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in ct_sops

        # the presentation state, key object selection and PDF summary are stored too
        (gsps,) = by_class["Grayscale Softcopy Presentation State Storage"]
        assert {i.ReferencedSOPInstanceUID for s in gsps.ReferencedSeriesSequence
                for i in s.ReferencedImageSequence} <= ct_sops
        (kos,) = by_class["Key Object Selection Document Storage"]
        keys = {it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for it in kos.ContentSequence if it.ValueType == "IMAGE"}
        assert keys & ct_sops and {sc.SOPInstanceUID for sc in scs} <= keys
        (pdf,) = by_class["Encapsulated PDF Storage"]
        assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF-")

        # the same study sent again (Orthanc's rule fires again; here by hand): no second set
        count = len(got)
        study = orthanc.rest("/studies")[0]
        orthanc.rest("/modalities/hounsfield/store", {"Resources": [study], "Synchronous": True})
        wait_until(lambda: False, timeout=6)  # quiet period + a routing pass
        assert len(jobs_of(cfg)) == 1, jobs_of(cfg)
        assert len(orthanc.rest("/instances")) == count
    finally:
        if platform:
            rc = platform.stop()
            assert rc == 0, platform.text()[-3000:]
        orthanc.stop()
