"""Headless Chromium (Debian's, via Playwright) opens, in OHIF served by Hounsfield's DICOMweb,
a synthetic chest CT with the ``legacy`` AI result objects: SC key images, the GSPS, the Key
Object Selection and the Encapsulated PDF.  OHIF loads every one of them from our DICOMweb
without an error, lists the SC and the PDF as display sets, and shows the PDF (its
``dicom-pdf`` extension renders the Encapsulated Document).  The pinned OHIF has no handler
for presentation states or key object selections: it lists the PR and KO series as
"unsupported" (a warning icon), which the test records — those objects are for PACS viewers
(Orthanc stores them, dcmtk's storescp receives them: tests/integration).

Needs /usr/bin/chromium and the OHIF dist in assets/ohif (scripts/setup.sh); fails and says so
when either is missing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.imaging import volume_from_datasets
from hounsfield.results import AIModel, build_results, series_content_key
from hounsfield.synth.ct import generate_ct
from tests.e2e.test_ohif_viewer import WAIT_MS, _requirements, ohif_session
from tests.web_data import to_bytes
from tests.web_server import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

MODEL = AIModel(name="demo-nodules", version="1", device_uid="2.25.271828182845904523536028747")
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9)

SETS_JS = """() => window.services.displaySetService.getActiveDisplaySets().map(d => ({
    modality: d.Modality || '', sopClass: d.SOPClassUID || '',
    handler: d.SOPClassHandlerId || '', series: d.SeriesInstanceUID || '',
    n: (d.instances || []).length, unsupported: !!d.unsupported}))"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    _requirements()
    tmp = tmp_path_factory.mktemp("e2e-legacy")
    settings = load_settings(data_dir=tmp / "var", profile="demo")
    archive = Archive.open(settings)
    ct = generate_ct("jingdong", 1, shape=(64, 160, 160), nodules=2)
    findings = [SimpleNamespace(x_mm=t.coordX, y_mm=t.coordY, z_mm=t.coordZ,
                                diameter_mm=t.diameter_mm, probability=0.9 - 0.1 * i)
                for i, t in enumerate(ct.truth)]
    ct_bytes = [to_bytes(d) for d in ct.datasets]
    key = series_content_key([(str(d.SOPInstanceUID), hashlib.sha256(b).hexdigest())
                              for d, b in zip(ct.datasets, ct_bytes, strict=True)])
    rs = build_results(ct.datasets, volume_from_datasets(ct.datasets), findings, MODEL,
                       input_key=key, profile_kinds="legacy", created=WHEN)
    assert {o.kind for o in rs.objects} == {"SC", "GSPS", "PDF", "KOS"}
    parts = [parse_part10(b) for b in ct_bytes] + [parse_part10(to_bytes(o.dataset))
                                                    for o in rs.objects]
    assert all(o.status == "stored" for o in store_instances(archive, parts, source="test"))
    live = LiveServer(settings, archive).start()
    yield live, rs
    live.stop()
    archive.close()


def test_ohif_loads_the_legacy_objects_and_shows_the_pdf(server, tmp_path: Path) -> None:
    live, rs = server
    with ohif_session(live.url, tmp_path) as (page, problems, console):
        page.goto(f"{live.url}/viewer/viewer?StudyInstanceUIDs={rs.study_instance_uid}")
        page.locator("canvas.cornerstone-canvas").first.wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(2000)
        skip = page.get_by_text("Skip all")
        if skip.count():
            skip.first.click()
        sets = page.evaluate(SETS_JS)
        console.write(f"display sets: {sets}\n")
        by_series = {}
        for s in sets:
            by_series.setdefault(s["series"], []).append(s)
        sc_series = rs.of_kind("SC")[0].SeriesInstanceUID
        pdf_series = rs.of_kind("PDF")[0].SeriesInstanceUID
        assert sc_series in by_series, sets
        assert pdf_series in by_series, sets
        for kind in ("GSPS", "KOS"):  # listed, loaded, not displayable by this OHIF
            (ko_pr,) = by_series[rs.of_kind(kind)[0].SeriesInstanceUID]
            assert ko_pr["n"] == 1, ko_pr
        (pdf_set,) = by_series[pdf_series]
        assert "pdf" in pdf_set["handler"].lower() and not pdf_set["unsupported"], pdf_set
        # the PDF thumbnail opens the document in the viewport
        page.get_by_text("DOC", exact=True).first.dblclick()
        doc = page.locator("object[type='application/pdf'], iframe, embed").first
        doc.wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / "pdf.png"))
        assert not problems, problems
