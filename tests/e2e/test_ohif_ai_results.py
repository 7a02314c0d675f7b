"""Headless Chromium (Debian's, driven by Playwright) opens a synthetic chest CT in OHIF served by
Hounsfield's DICOMweb, with the production AI result objects of ``hounsfield.results``: the
TID 1500 SR is hydrated into one tracked measurement per finding and drawn on the finding's
slice, the SEG is overlaid with one segment per finding, and the SC key image renders.

Needs /usr/bin/chromium and the OHIF dist in assets/ohif (both from scripts/setup.sh); when
either is missing the test fails and says so — it is never skipped silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

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
N_FINDINGS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    _requirements()
    tmp = tmp_path_factory.mktemp("e2e-ai")
    settings = load_settings(data_dir=tmp / "var", profile="demo")
    archive = Archive.open(settings)
    # seed 1 at this size has three isolated nodules of 7-20 mm, all inside the scan
    ct = generate_ct("jingdong", 1, shape=(80, 192, 192), nodules=N_FINDINGS)
    assert len(ct.truth) == N_FINDINGS
    findings = [SimpleNamespace(x_mm=t.coordX, y_mm=t.coordY, z_mm=t.coordZ,
                                diameter_mm=t.diameter_mm, probability=round(0.9 - 0.1 * i, 2))
                for i, t in enumerate(ct.truth)]
    ct_bytes = [to_bytes(d) for d in ct.datasets]
    key = series_content_key([(str(d.SOPInstanceUID), hashlib.sha256(b).hexdigest())
                              for d, b in zip(ct.datasets, ct_bytes, strict=True)])
    rs = build_results(ct.datasets, volume_from_datasets(ct.datasets), findings, MODEL,
                       input_key=key, profile_kinds={"SEG", "SR", "SC"}, created=WHEN)
    assert [o.kind for o in rs.objects] == ["SEG", "SR"] + ["SC"] * N_FINDINGS
    parts = [parse_part10(b) for b in ct_bytes] + [parse_part10(to_bytes(o.dataset))
                                                    for o in rs.objects]
    outcomes = store_instances(archive, parts, source="test")
    assert all(o.status == "stored" for o in outcomes)
    live = LiveServer(settings, archive).start()
    yield live, rs
    live.stop()
    archive.close()


def _shot(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def _coloured(image: np.ndarray) -> int:
    """Pixels that are clearly not gray (the CT is gray; overlays and annotations are not)."""
    return int(((image.max(axis=2) - image.min(axis=2)) > 60).sum())


def _red(image: np.ndarray) -> int:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r - g > 60) & (r - b > 60)).sum())


def _sr_areas(sr) -> list[float]:
    """The Area NUM of each Measurement Group of the SR, in order."""
    (measurements,) = (it for it in sr.ContentSequence if it.ValueType == "CONTAINER"
                       and it.ConceptNameCodeSequence[0].CodeValue == "126010")
    return [float(num.MeasuredValueSequence[0].NumericValue)
            for group in measurements.ContentSequence
            for num in group.ContentSequence
            if num.ValueType == "NUM" and num.ConceptNameCodeSequence[0].CodeMeaning == "Area"]


STATE_JS = """() => {
    const s = window.services;
    const sr = s.displaySetService.getActiveDisplaySets().filter(d => d.Modality === 'SR');
    const vp = s.cornerstoneViewportService.getCornerstoneViewport(
        s.viewportGridService.getActiveViewportId());
    return {sr: sr.map(d => [d.isRehydratable, d.isHydrated]),
            measurements: s.measurementService.getMeasurements().map(m => ({
                tool: m.toolName, label: m.label || '', uid: m.uid,
                image: m.referencedImageId || '', sop: m.SOPInstanceUID || ''})),
            imageId: vp && vp.getCurrentImageId ? (vp.getCurrentImageId() || '') : ''};
}"""


def test_ohif_hydrates_the_ai_sr_and_overlays_the_seg(server, tmp_path: Path) -> None:
    live, rs = server
    study_uid = rs.study_instance_uid
    labels = [f.label for f in rs.findings]
    assert labels == [f"Nodule {i}" for i in range(1, N_FINDINGS + 1)]
    with ohif_session(live.url, tmp_path) as (page, problems, _console):
        page.get_by_text("CT CHEST").first.wait_for(timeout=WAIT_MS)  # OHIF's study list

        page.goto(f"{live.url}/viewer/viewer?StudyInstanceUIDs={study_uid}")
        canvas = page.locator("canvas.cornerstone-canvas").first
        canvas.wait_for(timeout=WAIT_MS)
        page.get_by_text("I:", exact=False).first.wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1500)
        skip = page.get_by_text("Skip all")
        if skip.count():
            skip.first.click()  # OHIF's onboarding tour
        gray = _shot(canvas).mean(axis=2)
        page.screenshot(path=str(tmp_path / "ct.png"))
        assert gray.std() > 20, "the CT viewport is blank"

        # -- the SR: OHIF asks to track, hydrates every group into a PlanarFreehandROI ----
        page.get_by_text("SR", exact=True).first.dblclick()
        page.get_by_text("continue tracking measurements").first.wait_for(timeout=WAIT_MS)
        page.get_by_role("button", name="Yes").click(timeout=WAIT_MS)
        page.get_by_text(re.compile(r"Area: [0-9.]+ mm")).first.wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "sr.png"))
        state = page.evaluate(STATE_JS)
        assert state["sr"] == [[True, True]], (
            f"OHIF did not hydrate the SR (rehydratable, hydrated): {state}; console in "
            f"{tmp_path}")
        ms = state["measurements"]
        assert [m["tool"] for m in ms] == ["PlanarFreehandROI"] * N_FINDINGS, ms
        for f, m in zip(rs.findings, ms, strict=True):
            assert m["label"].startswith(f.label), (f.label, m)
            assert f.source_sop_instance_uid in m["image"], (f, m)

        panel = page.locator("[data-cy=trackedMeasurements-panel]")
        if not panel.count() or not panel.first.is_visible():
            page.locator("[data-cy=trackedMeasurements-btn]").first.click()
        rows = panel.first.locator("[data-cy=data-row]")
        rows.first.wait_for(timeout=WAIT_MS)
        titles = [t.strip() for t in panel.first.locator(
            "[data-cy=data-row-title]").all_text_contents()]
        assert len(titles) == N_FINDINGS, titles
        for label, title in zip(labels, titles, strict=True):
            assert title.startswith(label), titles

        areas = _sr_areas(rs.of_kind("SR")[0])
        assert len(areas) == N_FINDINGS, areas
        # each measurement, clicked in the panel, is shown on its finding's slice, drawn
        for i, f in enumerate(rs.findings):
            rows.nth(i).click()
            page.wait_for_function(
                """uid => { const s = window.services; const vp =
                    s.cornerstoneViewportService.getCornerstoneViewport(
                        s.viewportGridService.getActiveViewportId());
                    return vp && (vp.getCurrentImageId() || '').includes(uid); }""",
                arg=f.source_sop_instance_uid, timeout=WAIT_MS)
            page.get_by_text(re.compile(r"Area: [0-9.]+ mm")).first.wait_for(timeout=WAIT_MS)
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / f"sr-{f.number}.png"))
            drawn = page.locator("svg").filter(has_text="Area").count()
            assert drawn >= 1, f"{f.label} is not drawn on its slice"
            # OHIF recomputes the area from the hydrated outline: it is the SR's Area
            shown = [float(a) for t in page.get_by_text(re.compile(r"Area: [0-9.]+ mm"))
                     .all_text_contents() for a in re.findall(r"Area: ([0-9.]+) mm", t)]
            assert any(abs(a - areas[i]) <= 1 for a in shown), (f.label, shown, areas[i])

        # -- the SEG: one segment per finding, overlaid in its colour -----------------------
        # the CT alone is gray: on finding 1's slice (drawn in green above) nothing is red
        red_before = _red(_shot(page.locator("canvas.cornerstone-canvas").first))
        page.get_by_text("SEG", exact=True).first.dblclick()
        page.get_by_role("button", name="Yes").click(timeout=WAIT_MS)
        page.wait_for_timeout(2000)
        page.locator("[data-cy=panelSegmentation-btn]").first.click()
        for label in labels:  # the Segmentations panel (the measurements say "Nodule n, ...")
            page.get_by_text(label, exact=True).first.wait_for(timeout=WAIT_MS)
        # segment 1 (OHIF's default colour 1 is red): clicking it shows its centre slice
        seg = rs.of_kind("SEG")[0]
        frames = [str(fr.DerivationImageSequence[0].SourceImageSequence[0]
                      .ReferencedSOPInstanceUID)
                  for fr in seg.PerFrameFunctionalGroupsSequence
                  if fr.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1]
        page.get_by_text(labels[0], exact=True).first.click()
        page.wait_for_function(
            """uids => { const s = window.services; const vp =
                s.cornerstoneViewportService.getCornerstoneViewport(
                    s.viewportGridService.getActiveViewportId());
                const id = vp && (vp.getCurrentImageId() || '');
                return !!id && uids.some(u => id.includes(u)); }""",
            arg=frames, timeout=WAIT_MS)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / "seg.png"))
        red = _red(_shot(page.locator("canvas.cornerstone-canvas").first))
        assert red_before < 100 and red > red_before + 300, (
            f"no SEG overlay visible ({red_before} -> {red} red pixels); "
            f"screenshots in {tmp_path}")

        # -- the SC key images: secondary captures with the finding burned in ---------------
        key_uids = [str(d.SOPInstanceUID) for d in rs.of_kind("SC")]
        page.get_by_text("OT", exact=True).first.dblclick()
        page.wait_for_function(
            """uids => { const s = window.services; const vp =
                s.cornerstoneViewportService.getCornerstoneViewport(
                    s.viewportGridService.getActiveViewportId());
                const id = vp && (vp.getCurrentImageId() || '');
                return !!id && uids.some(u => id.includes(u)); }""",
            arg=key_uids, timeout=WAIT_MS)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / "sc.png"))
        sc = _shot(page.locator("canvas.cornerstone-canvas").first)
        assert sc.mean(axis=2).std() > 20, "the key image viewport is blank"
        assert _coloured(sc) > 200, "the key image shows no burned-in annotation"
    assert not problems, problems
