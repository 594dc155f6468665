"""The cohort report in a real headless browser (Debian's Chromium via Playwright).

A synthetic output folder (300 series, 200 QC pictures made by the real picture
code) exercises the virtual-scrolling table quickly; the demo run checks the
page of a real workflow run.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ROOT = Path(__file__).resolve().parents[1]
ROWS = "#series-table tbody tr.row"
ALL_IMAGES_LOAD = """async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  return [imgs.length, imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length];
}"""


def _browser(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one instance per thread)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (run .ci/install-browser as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = _browser(p)
        yield b
        b.close()


def _open(browser, out: Path):
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "share" / "qc" / "report.html").as_uri())
    page.wait_for_load_state("load")
    return page, errors


def _n_series(out: Path) -> int:
    return sum(len(json.loads(p.read_text())["series"]) for p in (out / "share" / "qc").rglob("qc.json"))


def _shown(page) -> tuple[int, int]:
    el = page.locator("#shown-count")
    return int(el.get_attribute("data-shown")), int(el.get_attribute("data-total"))


@pytest.fixture(scope="module")
def synthetic_page(browser, tmp_path_factory):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import synthetic_out

    from dicomprep.qc.report import write_report

    out = tmp_path_factory.mktemp("synthetic") / "out"
    synthetic_out.build(out, 60, series_per_unit=5, n_pictures=200, tables=False)
    write_report(out, verification={"status": "pass", "files_scanned": 1, "hits": []})
    page, errors = _open(browser, out)
    yield out, page, errors
    page.close()


def test_virtual_table_loads_and_counts_every_series(synthetic_page):
    out, page, errors = synthetic_page
    assert page.title() == "dicomprep cohort report"
    assert errors == []
    n = _n_series(out)
    assert n == 300
    assert _shown(page) == (n, n)
    rendered = page.locator(ROWS).count()
    assert 0 < rendered < n                       # only the rows in view are in the page
    page.evaluate("document.getElementById('series-scroll').scrollTop = 1e9")
    page.wait_for_function(f"!!document.querySelector(\"#series-table tr.row[data-i='{n - 1}']\")", timeout=10000)
    last = page.eval_on_selector_all(ROWS, "rs => rs.map(r => +r.getAttribute('data-i'))")
    assert max(last) == n - 1                     # the end of the table is reachable
    page.evaluate("document.getElementById('series-scroll').scrollTop = 0")


def test_filter_and_status_filter(synthetic_page):
    out, page, errors = synthetic_page
    n = _n_series(out)
    qcs = [json.loads(p.read_text()) for p in (out / "share" / "qc").rglob("qc.json")]
    n_ct = sum(s["kind"] == "ct_axial" for q in qcs for s in q["series"])
    n_warn = sum(s["status"] == "warn" for q in qcs for s in q["series"])
    page.fill("#filter", "ct_axial")
    assert _shown(page) == (n_ct, n)
    kinds = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.cells[3].textContent)")
    assert kinds and set(kinds) == {"ct_axial"}
    page.fill("#filter", "")
    page.select_option("#status-filter", "warn")
    assert _shown(page) == (n_warn, n)
    assert set(page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.getAttribute('data-status'))")) == {"warn"}
    page.select_option("#status-filter", "")
    assert _shown(page) == (n, n)
    assert errors == []


def test_sorting(synthetic_page):
    out, page, errors = synthetic_page
    page.click("#series-table thead th:nth-child(6)")          # status, ascending
    statuses = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.cells[5].textContent)")
    assert statuses[0] == "fail" and statuses == sorted(statuses)
    page.click("#series-table thead th:nth-child(6)")          # descending
    statuses = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.cells[5].textContent)")
    assert statuses[0] == "warn" and statuses == sorted(statuses, reverse=True)
    page.click("#series-table thead th:nth-child(7)")          # findings: fail count, then warn count
    first = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.getAttribute('data-status'))")
    assert first[0] == "pass"
    page.click("#series-table thead th:nth-child(7)")
    first = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.getAttribute('data-status'))")
    assert first[0] == "fail"
    assert errors == []


def test_no_broken_image_and_details_of_a_subject(synthetic_page):
    out, page, errors = synthetic_page
    page.click("#series-table thead th:nth-child(2)")          # unit, ascending: pictures are on the first units
    n_img, broken = page.evaluate(ALL_IMAGES_LOAD)
    assert n_img > 0 and broken == 0
    page.click(f"{ROWS} >> nth=0")
    assert page.locator("#details div.series").count() > 0
    assert page.locator("#details img.full").count() > 0
    n_img, broken = page.evaluate(ALL_IMAGES_LOAD)
    assert broken == 0
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-synthetic.png"), full_page=False)


def test_embedded_pictures_page_travels_alone(browser, synthetic_page, tmp_path):
    """qc.report_pictures: embedded puts the PNGs in the page: a copy of the page
    alone, away from share/qc/, still shows every picture."""
    from dicomprep.qc.report import write_report

    out, _, _ = synthetic_page
    page_file = write_report(out, verification={"status": "pass", "files_scanned": 1, "hits": []},
                             config={"qc": {"report_pictures": "embedded"}})
    alone = tmp_path / "report.html"
    alone.write_bytes(page_file.read_bytes())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(alone.as_uri())
    page.click("#series-table thead th:nth-child(2)")
    n_img, broken = page.evaluate(ALL_IMAGES_LOAD)
    assert n_img > 0 and broken == 0 and errors == []
    assert page.eval_on_selector_all("img.thumb", "is => is.every(i => i.src.startsWith('data:image/png;base64,'))")
    page.close()


# --- the page of a real workflow run (the demo cohort) ------------------------------

@pytest.fixture(scope="module")
def page_of_report(browser, demo_run):
    out, _ = demo_run
    page, errors = _open(browser, out)
    yield out, page, errors
    page.close()


@pytest.mark.slow
def test_report_loads_without_console_errors(page_of_report):
    out, page, errors = page_of_report
    assert page.title() == "dicomprep cohort report"
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)


@pytest.mark.slow
def test_one_row_per_series_and_images_load(page_of_report):
    out, page, _ = page_of_report
    n_series = _n_series(out)
    assert _shown(page) == (n_series, n_series) and n_series > 0
    assert 0 < page.locator(ROWS).count() <= n_series
    n_img, broken = page.evaluate(ALL_IMAGES_LOAD)
    assert n_img > 0 and broken == 0


@pytest.mark.slow
def test_filter_narrows_the_table(page_of_report):
    _, page, _ = page_of_report
    shown, total = _shown(page)
    page.fill("#filter", "ct_axial")
    visible, _ = _shown(page)
    assert 0 < visible < total
    kinds = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.cells[3].textContent)")
    assert all("ct_axial" in k for k in kinds)
    page.fill("#filter", "")
    page.select_option("#status-filter", "pass")
    shown = page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.getAttribute('data-status'))")
    assert all(s == "pass" for s in shown)
    page.select_option("#status-filter", "")


@pytest.mark.slow
def test_report_and_pictures_pass_the_leak_verifier(demo_run):
    out, _ = demo_run
    ver = json.loads((out / "share" / "verification.json").read_text())
    assert ver["status"] == "pass"
    scanned = ver.get("files_scanned", 0)
    n_png = len(list((out / "share" / "qc").rglob("*.png")))
    assert n_png > 0 and scanned >= n_png
