"""The cohort report in a real headless browser (Debian's Chromium via Playwright)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def page_of_report(demo_run):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (run .ci/install-browser as root)")
    playwright = pytest.importorskip("playwright.sync_api")
    out, _ = demo_run
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "share" / "qc" / "report.html").as_uri())
        page.wait_for_load_state("load")
        yield out, page, errors
        browser.close()


def test_report_loads_without_console_errors(page_of_report):
    out, page, errors = page_of_report
    assert page.title() == "dicomprep cohort report"
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)


def test_one_row_per_series_and_images_load(page_of_report):
    out, page, _ = page_of_report
    qcs = [json.loads(p.read_text()) for p in (out / "share" / "qc").rglob("qc.json")]
    n_series = sum(len(q["series"]) for q in qcs)
    assert page.locator("#series-table tbody tr").count() == n_series > 0
    images = page.locator("img")
    assert images.count() > 0
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0


def test_filter_narrows_the_table(page_of_report):
    _, page, _ = page_of_report
    rows = page.locator("#series-table tbody tr")
    total = rows.count()
    page.fill("#filter", "ct_axial")
    visible = page.evaluate("Array.from(document.querySelectorAll('#series-table tbody tr')).filter(r => r.style.display !== 'none').length")
    assert 0 < visible < total
    kinds = page.evaluate("Array.from(document.querySelectorAll('#series-table tbody tr')).filter(r => r.style.display !== 'none').map(r => r.cells[3].textContent)")
    assert all(k == "ct_axial" for k in kinds) or all("ct_axial" in k for k in kinds)
    page.fill("#filter", "")
    page.select_option("#status-filter", "pass")
    shown = page.evaluate("Array.from(document.querySelectorAll('#series-table tbody tr')).filter(r => r.style.display !== 'none').map(r => r.getAttribute('data-status'))")
    assert all(s == "pass" for s in shown)
    page.select_option("#status-filter", "")


def test_report_and_pictures_pass_the_leak_verifier(demo_run):
    out, _ = demo_run
    ver = json.loads((out / "share" / "verification.json").read_text())
    assert ver["status"] == "pass"
    scanned = ver.get("files_scanned", 0)
    n_png = len(list((out / "share" / "qc").rglob("*.png")))
    assert n_png > 0 and scanned >= n_png
