"""Benchmark: growth of the cohort steps with the number of units (1k, 5k, 10k).

Standalone: ``python benchmarks/bench_scale.py`` (``BENCH_SIZES``, default
``1000,5000,10000`` units of 5 series; ``BENCH_PICTURES``, default 2,000).

Builds one synthetic output folder of the largest size (``synthetic_out.build``:
per-unit series tables, de-identification and dcm2niix manifests, qc.json,
pictures), and for each size an output folder whose ``private/units.csv``
lists the first N units (the per-unit folders are shared by symlinks). Then
times, per size, the steps that read every unit:

* ``share_tables``: ``dicomprep.tables.write_share_tables`` (series.csv/.parquet);
* ``report``: ``dicomprep.qc.report.write_report`` (report.html);
* ``status``: ``dicomprep.qc.status.status_summary``.

Prints seconds, microseconds per series, and the growth factor between
consecutive sizes next to the size factor (linear growth: the two match).
(The ``snakemake -n`` figure of 10k units is bench_dryrun.py's.)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import synthetic_out  # noqa: E402

from dicomprep.qc.report import write_report  # noqa: E402
from dicomprep.qc.status import status_summary  # noqa: E402
from dicomprep.tables import write_share_tables  # noqa: E402

SERIES_PER_UNIT = 5


def subset(full: Path, dest: Path, n: int) -> Path:
    """An output folder listing the first ``n`` units of ``full`` (shared per-unit folders)."""
    (dest / "private").mkdir(parents=True)
    (dest / "share").mkdir(parents=True)
    for rel in ("private/units", "private/deid", "private/convert"):
        (dest / rel).symlink_to(full / rel, target_is_directory=True)
    (dest / "share" / "qc").symlink_to(full / "share" / "qc", target_is_directory=True)
    units = pd.read_csv(full / "private" / "units.csv", dtype=str, keep_default_na=False)
    units.iloc[:n].to_csv(dest / "private" / "units.csv", index=False)
    return dest


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "1000,5000,10000").split(",")]
    n_pics = int(os.environ.get("BENCH_PICTURES", "2000"))
    verification = {"status": "pass", "files_scanned": 1, "hits": []}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        full = tmp / "full"
        t0 = time.perf_counter()
        counts = synthetic_out.build(full, max(sizes), series_per_unit=SERIES_PER_UNIT, n_pictures=n_pics)
        print(f"synthetic output: {counts['units']} units, {counts['series']} series, {counts['pictures']} pictures "
              f"({time.perf_counter() - t0:.0f} s to build)")
        steps = {
            "share_tables": lambda out: write_share_tables(out),
            "report": lambda out: write_report(out, verification=verification),
            "status": lambda out: status_summary(out),
        }
        results: dict[str, list[float]] = {name: [] for name in steps}
        for n in sizes:
            out = subset(full, tmp / f"n{n}", n)
            for name, fn in steps.items():
                results[name].append(timed(lambda: fn(out)))
        print(f"{'step':14s} " + " ".join(f"{f'{n} units':>12s}" for n in sizes) + "   growth (size factor)")
        for name, secs in results.items():
            growth = ", ".join(f"{secs[i] / secs[i - 1]:.2f}x ({sizes[i] / sizes[i - 1]:.0f}x)" for i in range(1, len(sizes)))
            print(f"{name:14s} " + " ".join(f"{s:10.2f} s" for s in secs) + f"   {growth}")
        per = ", ".join(f"{name} {secs[-1] / (sizes[-1] * SERIES_PER_UNIT) * 1e6:.0f} µs"
                        for name, secs in results.items())
        print(f"per series at {sizes[-1]} units: {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
