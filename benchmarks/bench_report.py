"""Benchmark: the cohort report (share/qc/report.html) of 50,000 series in headless Chromium.

Standalone: ``python benchmarks/bench_report.py`` (``BENCH_UNITS``, default
10,000 units × 5 series; ``BENCH_PICTURES``, default 3,000 QC pictures). Needs
Playwright and Debian's ``/usr/bin/chromium`` (``.ci/install-browser``).

Builds a synthetic output folder (``synthetic_out.build``: qc.json per unit,
PNG pictures made by the real picture code), then renders, in the same run:

* ``now``: ``dicomprep.qc.report.write_report`` (JSON embedded once, virtual
  scrolling, pictures as files beside the page, loaded lazily);
* ``full_table``: the same rows as one plain HTML table of every row (no
  script), thumbnails as the same lazy ``<img>`` files: what virtual
  scrolling saves;
* ``v0``: the report code before this change (commit ``26c1468``, loaded
  from git): a full table, pictures as data URIs (twice: table and subject
  sections).

For each it prints the render time in Python, the file size, and the time
Chromium takes from navigation to a usable table (``load`` event plus the
first table row drawn). Targets for ``now``: < 3 s and < 20 MB.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import synthetic_out  # noqa: E402

from dicomprep.qc import report  # noqa: E402

BASELINE_COMMIT = "26c1468"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT", "120"))
VERIFICATION = {"status": "pass", "files_scanned": 1, "hits": []}


def load_baseline():
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:src/dicomprep/qc/report.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("dicomprep.qc._report_v0", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "dicomprep.qc"
    exec(compile(src, "report_v0.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def plain_table_page(out: Path) -> Path:
    """The same series rows as one plain HTML table (every row in the DOM)."""
    import html

    from dicomprep.paths import layout

    lay = layout(out)
    units = report._read_csv(lay.units_table)
    qcs = [json.loads(lay.share.qc_json(u).read_text()) for u in units["unit"] if lay.share.qc_json(u).is_file()]
    data = report.series_data(lay.share_dir, units, qcs)
    esc = html.escape
    rows = []
    for r in data["rows"]:
        unit, subject = data["units"][r[0]]
        findings = "; ".join(f"{c[0]}: {c[2]}" for c in (data["checks"][i] for i in r[6]) if c[1] != "pass")
        pics = "".join(f"<img class='thumb' loading='lazy' src='{esc(p)}' alt=''>" for p in r[7][:2])
        rows.append(f"<tr><td>{esc(subject)}</td><td>{esc(unit)}</td><td>{esc(r[1])}</td><td>{esc(r[2])}</td>"
                    f"<td>{esc(r[3])}</td><td>{esc(r[4])}</td><td>{esc(findings) or 'all checks pass'}</td>"
                    f"<td>{r[5]}</td><td>{pics}</td></tr>")
    page = lay.share_dir / "qc" / "report_full_table.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>full table</title>"
                    f"<style>{report.CSS}</style></head><body><table id='series-table'><tbody>{''.join(rows)}"
                    "</tbody></table></body></html>", encoding="utf-8")
    return page


def open_in_chromium(html: Path, first_row: str, timeout_s: float = 180) -> tuple[float, int, list[str]]:
    """Seconds from navigation to the load event and ``first_row`` present; rows in the DOM; console errors."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        page.goto(html.as_uri(), wait_until="load", timeout=timeout_s * 1000)
        page.wait_for_selector(first_row, timeout=timeout_s * 1000)
        seconds = time.perf_counter() - t0
        rows = page.locator("#series-table tbody tr").count()
        browser.close()
    return seconds, rows, errors


def main() -> int:
    n_units = int(os.environ.get("BENCH_UNITS", "10000"))
    n_pics = int(os.environ.get("BENCH_PICTURES", "3000"))
    if not Path(CHROMIUM).exists():
        print(f"Chromium not found at {CHROMIUM}: run .ci/install-browser (as root) first")
        return 1
    baseline = load_baseline()
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        counts = synthetic_out.build(out, n_units, series_per_unit=5, n_pictures=n_pics, tables=False)
        print(f"synthetic output: {counts['units']} units, {counts['series']} series, {counts['pictures']} pictures "
              f"({time.perf_counter() - t0:.0f} s to build)")
        results = {}
        t0 = time.perf_counter()
        page = report.write_report(out, verification=VERIFICATION)
        results["now"] = (time.perf_counter() - t0, page.stat().st_size, page)
        t0 = time.perf_counter()
        plain = plain_table_page(out)
        results["full_table"] = (time.perf_counter() - t0, plain.stat().st_size, plain)
        if baseline is not None:
            t0 = time.perf_counter()
            html = baseline.render(out, verification=VERIFICATION)
            old = out / "share" / "qc" / "report_v0.html"
            old.write_text(html, encoding="utf-8")
            results["v0"] = (time.perf_counter() - t0, old.stat().st_size, old)
        print(f"{'page':10s} {'render s':>9s} {'size MB':>8s} {'open s':>7s} {'rows in DOM':>12s}  errors")
        opened = {}
        for name, (render_s, size, path) in results.items():
            first = "#series-table tbody tr.row" if name == "now" else "#series-table tbody tr"
            try:
                secs, rows, errors = open_in_chromium(path, first, TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a timeout of the baseline is a result too
                secs, rows, errors = float("nan"), 0, [f"{type(exc).__name__}: {str(exc)[:200]}"]
            opened[name] = secs
            print(f"{name:10s} {render_s:9.2f} {size / 1e6:8.2f} {secs:7.2f} {rows:12d}  {len(errors)} {errors[:2]}")
        for name in results:
            if name != "now":
                t = opened[name]
                speed = f"{opened['now'] / t:.3f}x" if t == t else f"< {opened['now'] / TIMEOUT_S:.3f}x (did not open in {TIMEOUT_S:.0f} s)"
                print(f"now / {name}: open time {speed}, size {results['now'][1] / results[name][1]:.3f}x")
        now_s, now_mb = opened["now"], results["now"][1] / 1e6
        print(f"targets: open < 3 s ({'met' if now_s < 3 else 'NOT met'}: {now_s:.2f} s), "
              f"size < 20 MB ({'met' if now_mb < 20 else 'NOT met'}: {now_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
