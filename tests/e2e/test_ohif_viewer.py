"""Headless Chromium (Debian's, driven by Playwright) logs into the console, opens a CT in OHIF,
and sees the image rendered, a DICOM SEG overlay on it, and a TID 1500 SR measurement.

Needs /usr/bin/chromium and the OHIF dist in assets/ohif (both from scripts/setup.sh); when
either is missing the test fails and says so — it is never skipped silently.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hounsfield.archive import Archive
from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.config import load_settings
from hounsfield.web.viewer import default_viewer_dir
from tests.web_data import ct_series, seg_of, sr_of, to_bytes
from tests.web_server import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480)]

# generous upper bounds: OHIF renders with SwiftShader on a 2-core CI machine that may be busy
WAIT_MS = 90_000

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]


@contextmanager
def ohif_session(base_url: str, folder: Path) -> Iterator[tuple]:
    """OHIF in headless Chromium, logged in as the demo user through our login page (the viewer
    redirects there first): yields ``(page, problems, console)`` — ``problems`` collects every
    5xx and every failed DICOMweb request, ``console`` is the file OHIF's console goes to
    (``folder/console.log``).  On a failure the page is saved as ``folder/failure.png``."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with open(folder / "console.log", "w") as console, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: console.write(f"{m.type}: {m.text}\n"))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
                    if r.status >= 500 or ("/dicom-web/" in r.url and r.status >= 400) else None)
            page.goto(base_url + "/viewer/")
            page.wait_for_url(re.compile(r".*/login\?next=.*"))
            page.fill("input[name=username]", "demo")
            page.fill("input[name=password]", "demo")
            page.click("button[type=submit]")
            page.wait_for_url("**/viewer/")
            yield page, problems, console
        except Exception:
            if page is not None:
                page.screenshot(path=str(folder / "failure.png"))
            raise
        finally:
            browser.close()


def _requirements() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium ({CHROMIUM})")
    if not (default_viewer_dir() / "index.html").is_file():
        missing.append(f"the OHIF dist ({default_viewer_dir()})")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup.sh", pytrace=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    _requirements()
    tmp = tmp_path_factory.mktemp("e2e")
    settings = load_settings(data_dir=tmp / "var", profile="demo")
    archive = Archive.open(settings)
    cts = ct_series(8, 64, seed="e2e-ct", patient="VIEWER^TEST", description="CT E2E")
    seg = seg_of(cts)
    sr = sr_of(cts)
    outcomes = store_instances(archive, [parse_part10(to_bytes(d)) for d in cts + [seg, sr]],
                               source="test")
    assert all(o.status == "stored" for o in outcomes)
    live = LiveServer(settings, archive).start()
    yield live, cts, sr
    live.stop()
    archive.close()


def _shot(locator) -> np.ndarray:  # noqa: ANN001
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def test_login_open_ct_in_ohif_and_show_seg(server, tmp_path: Path) -> None:  # noqa: ANN001
    live, cts, sr = server
    with ohif_session(live.url, tmp_path) as (page, problems, _console):
        page.get_by_text("CT E2E").first.wait_for(timeout=WAIT_MS)  # OHIF's study list

        page.goto(live.url + "/studies")
        page.get_by_text("VIEWER TEST").first.click()
        page.wait_for_url("**/studies/*")
        page.click("#open-viewer")
        page.wait_for_url(re.compile(r".*/viewer/viewer\?StudyInstanceUIDs=.*"))
        canvas = page.locator("canvas.cornerstone-canvas").first
        canvas.wait_for(timeout=WAIT_MS)
        page.get_by_text("I:", exact=False).first.wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1500)
        skip = page.get_by_text("Skip all")
        if skip.count():
            skip.first.click()  # OHIF's onboarding tour
        image = _shot(canvas)
        page.screenshot(path=str(tmp_path / "ct.png"))
        gray = image.mean(axis=2)
        assert gray.std() > 20, "the CT viewport is blank"
        assert (gray > 60).mean() > 0.1, "the CT viewport shows almost nothing"
        reddish_before = int(((image[..., 0] - image[..., 1]) > 60).sum())

        page.get_by_text("SEG", exact=True).first.dblclick()
        page.get_by_role("button", name="Yes").click(timeout=WAIT_MS)
        page.wait_for_timeout(2000)
        page.locator("[data-cy=panelSegmentation-btn]").first.click()
        page.get_by_text("sphere").first.wait_for(timeout=WAIT_MS)  # Segmentations panel
        page.wait_for_timeout(1000)
        overlay = _shot(page.locator("canvas.cornerstone-canvas").first)
        page.screenshot(path=str(tmp_path / "seg.png"))
        reddish = int(((overlay[..., 0] - overlay[..., 1]) > 60).sum())
        assert reddish > reddish_before + 500, (
            f"no SEG overlay visible ({reddish_before} -> {reddish} red pixels); "
            f"screenshots in {tmp_path}")

        # a TID 1500 measurement report that OHIF can rehydrate (no "!" badge): it asks
        # "continue tracking measurements?", turns the group into a tracked measurement
        # (its measurement panel) and draws the ROI with its area on the CT
        page.get_by_text("SR", exact=True).first.dblclick()
        page.get_by_text("continue tracking measurements").first.wait_for(timeout=WAIT_MS)
        page.get_by_role("button", name="Yes").click(timeout=WAIT_MS)
        page.get_by_text(re.compile(r"Area: [0-9.]+ mm")).first.wait_for(timeout=WAIT_MS)
        shown = page.get_by_text(re.compile(r"Area: [0-9.]+ mm")).first.text_content() or ""
        group = sr.ContentSequence[-1].ContentSequence[0]  # Imaging Measurements > group
        (num,) = (i for i in group.ContentSequence if i.ValueType == "NUM")
        sr_area = float(num.MeasuredValueSequence[0].NumericValue)
        # OHIF recomputes the area from the hydrated polygon: it must match the SR's
        assert abs(float(shown.split()[1]) - sr_area) <= 1, (shown, sr_area)
        page.wait_for_timeout(1000)
        report = _shot(page.locator("canvas.cornerstone-canvas").first)
        page.screenshot(path=str(tmp_path / "sr.png"))
        state = page.evaluate("""() => {
            const s = window.services;
            const sr = s.displaySetService.getActiveDisplaySets()
                .filter(d => d.Modality === 'SR');
            return {sr: sr.map(d => [d.isRehydratable, d.isHydrated]),
                    measurements: s.measurementService.getMeasurements().map(
                        m => [m.toolName, m.referencedImageId ? 'image' : 'none'])};
        }""")
        assert state["sr"] == [[True, True]], (
            f"OHIF did not hydrate the SR (rehydratable, hydrated): {state}; console in "
            f"{tmp_path}")
        assert state["measurements"] == [["PlanarFreehandROI", "image"]], state
        svg = page.locator("svg").filter(has_text="Area").count()
        assert svg >= 1, "the SR measurement is not drawn"
        assert report.std() > 20
    assert not problems, problems
    live.flush_audit()
    from hounsfield.audit import query

    with live.archive.session() as s:
        actions = {e.action for e in query(s, {"actor": "demo"}, limit=1000)}
    assert {"LOGIN", "QIDO", "WADO", "VIEW"} <= actions
