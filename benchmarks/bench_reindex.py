"""Re-index of an unchanged tree of ~100,000 files versus a plain walk.

Builds a temporary tree of hard links to the shared test data (copies when
hard links are impossible), repeated until it holds ``--files`` files, indexes
it once (2 workers; timed and reported, not the point), then measures:

* ours: ``build_index`` again on the unchanged tree (target: under 10 s);
* ours, full rebuild of the tables from the cache: the same after removing
  ``index_state.json`` (every file still comes from the cache, none is parsed,
  but layout, series and all tables are recomputed and rewritten);
* baseline: ``os.walk`` + ``os.stat`` of every file of the same tree.

    python benchmarks/bench_reindex.py [DATA_DIR] [--files 100000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.index import STATE_FILE, build_index  # noqa: E402


def make_tree(data: Path, dst: Path, n_files: int) -> int:
    sources = []
    for dirpath, _dirs, files in os.walk(data):
        for name in files:
            p = os.path.join(dirpath, name)
            sources.append((p, os.path.relpath(p, data)))
    sources.sort()
    made = 0
    copy = 0
    while made < n_files:
        base = dst / f"copy{copy:03d}"
        for src, rel in sources:
            if made >= n_files:
                break
            target = base / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
            made += 1
        copy += 1
    return made


def walk_stat(root: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            n += 1
    return n


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("DICOMPREP_TESTDATA", str(ROOT.parent / "shared" / "data"))
    ap.add_argument("data", nargs="?", default=default)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", help="build the tree and index here and keep them")
    args = ap.parse_args()
    quiet = logging.getLogger("dicomprep.bench.reindex")
    quiet.handlers[:] = [logging.NullHandler()]
    quiet.propagate = False

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_reindex."))
    tree, out = work / "tree", work / "out"
    try:
        if not tree.is_dir():
            n, dt, _ = timed(lambda: make_tree(Path(args.data), tree, args.files))
            print(f"made a tree of {n} files (hard links) in {dt:.1f} s")
        first, dt, _ = timed(lambda: build_index(tree, out, workers=args.workers, log=quiet))
        print(f"first index: {first.n_files} files, {first.n_parsed} parsed, {first.n_instances} instances, "
              f"{first.n_series} series in {dt:.1f} s (workers={args.workers})")

        n_walk, t_walk, c_walk = timed(lambda: walk_stat(tree))
        again, t_again, c_again = timed(lambda: build_index(tree, out, workers=args.workers, log=quiet))
        (out / "private" / "index" / STATE_FILE).unlink()
        full, t_full, c_full = timed(lambda: build_index(tree, out, workers=args.workers, log=quiet))
        assert again.n_parsed == 0 and full.n_parsed == 0
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"baseline os.walk + os.stat of {n_walk} files           : wall {t_walk:6.2f} s  cpu {c_walk:6.2f} s")
        print(f"ours re-index, unchanged tree (0 parsed)           : wall {t_again:6.2f} s  cpu {c_again:6.2f} s"
              f"  ({t_again / t_walk:.1f}x the walk; target < 10 s: {'OK' if t_again < 10 else 'MISSED'})")
        print(f"ours re-index rebuilding every table (0 parsed)    : wall {t_full:6.2f} s  cpu {c_full:6.2f} s"
              f"  ({t_full / t_walk:.1f}x the walk)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
