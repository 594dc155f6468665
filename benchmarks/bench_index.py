"""Header indexing speed: dicomprep's index versus a plain pydicom loop.

Measured in one run on the same files (every non-clutter file under the data
folder, default ``DICOMPREP_TESTDATA`` or ../shared/data):

* baseline: ``pydicom.dcmread(path, stop_before_pixels=True, force=True)``
  (gzip-wrapped files opened with ``gzip.open`` so pydicom can read them);
* ours, 1 process: ``index.read_instance`` over the same files (the lean tag
  walker with its pydicom fallback), and a full ``build_index(workers=1)``
  (discovery, reading, layout, series table, Parquet writing) from an empty
  output folder;
* ours, 2 processes: ``build_index(workers=2)``.

Each timing is the best of ``--repeat`` runs (files are in the page cache
after the first pass). Prints files/s and the ratios.

    python benchmarks/bench_index.py [DATA_DIR] [--repeat 3]
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pydicom  # noqa: E402

from dicomprep.index import build_index  # noqa: E402
from dicomprep.index_discover import clutter_reason, discover  # noqa: E402
from dicomprep.index_read import read_instance  # noqa: E402


def baseline(paths: list[str]) -> int:
    ok = 0
    for p in paths:
        try:
            with open(p, "rb") as fh:
                gz = fh.read(2) == b"\x1f\x8b"
            src = gzip.open(p) if gz else p
            pydicom.dcmread(src, stop_before_pixels=True, force=True)
            ok += 1
        except Exception:
            pass
    return ok


def ours(paths: list[str]) -> int:
    return sum(1 for p in paths if read_instance(p)["reason"] is None)


def best(fn, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best CPU time (this process) over ``repeat`` runs.
    CPU time is the fairer single-process figure on a shared, loaded machine."""
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("DICOMPREP_TESTDATA", str(ROOT.parent / "shared" / "data"))
    ap.add_argument("data", nargs="?", default=default)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    found, _ = discover(args.data)
    paths = [f.path for f in found if clutter_reason(f.relpath) is None]
    n_all = len(found)
    print(f"{len(paths)} candidate files ({n_all} files in the tree) under {args.data}")
    baseline(paths)  # warm the page cache
    t_base = best(lambda: baseline(paths), args.repeat)
    t_ours = best(lambda: ours(paths), args.repeat)

    tmp = Path(tempfile.mkdtemp(prefix="bench_index."))
    try:
        def full(workers: int):
            out = tmp / f"out{workers}"
            shutil.rmtree(out, ignore_errors=True)
            build_index(args.data, out, workers=workers, log=_quiet())

        t_full1 = best(lambda: full(1), args.repeat)
        t_full2 = best(lambda: full(2), args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(paths)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wall = elapsed, cpu = this process")

    def line(label, t, base=None):
        text = f"{label:<48}: wall {t[0]:6.2f} s {n / t[0]:6.0f} files/s | cpu {t[1]:6.2f} s {n / t[1]:6.0f} files/s"
        if base is not None:
            text += f" | ratio wall {base[0] / t[0]:.2f}x cpu {base[1] / t[1]:.2f}x"
        print(text)

    line("baseline pydicom.dcmread(stop_before_pixels)", t_base)
    line("ours read_instance loop, 1 process", t_ours, t_base)
    line("ours build_index workers=1 (complete, written)", t_full1, t_base)
    print(f"{'ours build_index workers=2':<48}: wall {t_full2[0]:6.2f} s {n / t_full2[0]:6.0f} files/s"
          f" | ratio wall {t_base[0] / t_full2[0]:.2f}x vs baseline, {t_full1[0] / t_full2[0]:.2f}x vs workers=1")


def _quiet():
    import logging

    lg = logging.getLogger("dicomprep.bench.quiet")
    lg.handlers[:] = [logging.NullHandler()]
    lg.propagate = False
    return lg


if __name__ == "__main__":
    main()
