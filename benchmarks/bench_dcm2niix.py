"""Benchmark: dicomprep's per-series conversion vs bare dcm2niix (issue 4: <= 1.2x).

Ours: :func:`dicomprep.convert.dcm2niix.convert_series` for every series of a
unit (staging, dcm2niix uncompressed, JSON scrub, header patch, gzip, rename).
Baseline: the same binary run directly on the same series folders with
``-z y -b y`` (compressed NIfTI + sidecar, its default naming).

dcm_qa_xa30i's inputs are gzip-wrapped (``*.dcm.gz``), which bare dcm2niix
cannot read at all; the baseline therefore runs on a decompressed copy made
before timing, while our run decompresses inside the timed region (counted
against us: the 819 files hold 138 MB of DICOM, ~0.3 s of CPU to inflate).
A third line runs ours on the decompressed copy too, to separate that cost.
Ours runs with the one thread the workflow's rule reserves per unit (units run
side by side) and with two (the gzip and the inflating of inputs in parallel).

    .venv/bin/python benchmarks/bench_dcm2niix.py [--repeat 3] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.convert import dcm2niix as d2n  # noqa: E402
from dicomprep.workflow_support import STAGE_RESOURCES  # noqa: E402

#: The threads the workflow's convert_dcm2niix rule gives a unit (ours runs with them).
STAGE_THREADS = STAGE_RESOURCES["dcm2niix"]["threads"]


def series_sets(data: Path, scratch: Path) -> dict[str, list[tuple[list[Path], Path]]]:
    """{dataset: [(our input files, baseline folder)]}."""
    xa_in = data / "dcm_qa_xa30i" / "In" / "11001_DWI_dir80_AP"
    xa_plain = scratch / "xa30i_plain"
    xa_plain.mkdir(parents=True)
    for f in sorted(xa_in.glob("*.gz")):
        (xa_plain / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    nih = []
    for folder in sorted((data / "dcm_qa_nih" / "In").glob("*/mr_*")):
        nih.append((sorted(folder.glob("*.dcm")), folder))
    return {
        "dcm_qa_xa30i": [(sorted(xa_in.glob("*.dcm.gz")), xa_plain)],
        "dcm_qa_xa30i (ours also on the decompressed copy)": [(sorted(xa_plain.glob("*.dcm")), xa_plain)],
        "dcm_qa_nih": nih,
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(series: list[tuple[list[Path], Path]], out: Path, level: int,
             threads: int = STAGE_THREADS) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i, (paths, _) in enumerate(series):
        res = d2n.convert_series(paths, out, f"P_S_s{i:03d}", gzip_level=level, threads=threads)
        if res.status != "converted":
            raise SystemExit(f"ours failed: {res.reason}")
    return time.perf_counter() - t0, cpu_seconds() - c0


def run_bare(series: list[tuple[list[Path], Path]], out: Path) -> tuple[float, float]:
    binary = d2n.dcm2niix_binary()
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i, (_, folder) in enumerate(series):
        sub = out / f"{i:03d}"
        sub.mkdir(parents=True)
        proc = subprocess.run([binary, "-z", "y", "-b", "y", "-o", str(sub), str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bare dcm2niix failed: {proc.stdout}{proc.stderr}")
    return time.perf_counter() - t0, cpu_seconds() - c0


def gz_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.nii.gz"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--levels", default="4,6", help="gzip levels to run ours with (dcm2niix's default is 6)")
    ap.add_argument("--threads", default=f"{STAGE_THREADS},2",
                    help="threads for ours (the first: what the workflow's rule reserves per unit)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    print(f"dcm2niix {d2n.dcm2niix_version()} at {d2n.dcm2niix_binary()}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        sets = series_sets(args.data, scratch / "prep")
        levels = [int(x) for x in args.levels.split(",")]
        thread_counts = list(dict.fromkeys(int(x) for x in args.threads.split(",")))
        run_ours(sets["dcm_qa_nih"][:1], scratch / "warm", levels[0])      # warm caches and imports
        run_bare(sets["dcm_qa_nih"][:1], scratch / "warm-bare")
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
              "(wall times are noisy when the machine is shared; CPU times less so)")
        for name, series in sets.items():
            times: dict[str, list[tuple[float, float]]] = {"bare": []}
            sizes: dict[str, int] = {}
            for r in range(args.repeat):              # interleaved, so load drifts hit both
                out = scratch / f"{name}-bare-{r}"
                times["bare"].append(run_bare(series, out))
                sizes["bare"] = gz_bytes(out)
                shutil.rmtree(out)
                for level in levels:
                    for threads in thread_counts:
                        key = f"ours-z{level} {threads} thread{'s' if threads > 1 else ''}"
                        out = scratch / f"{name}-ours{level}-t{threads}-{r}"
                        times.setdefault(key, []).append(run_ours(series, out, level, threads))
                        sizes[key] = gz_bytes(out)
                        shutil.rmtree(out)
            n_files = sum(len(p) for p, _ in series)
            bw = statistics.median(t for t, _ in times["bare"])
            bc = statistics.median(c for _, c in times["bare"])
            print(f"{name}: {len(series)} series, {n_files} files; bare dcm2niix -z y: wall {bw:.3f} s, "
                  f"cpu {bc:.3f} s, {sizes['bare'] / 1e6:.2f} MB .nii.gz")
            for key, vals in times.items():
                if key == "bare":
                    continue
                w = statistics.median(t for t, _ in vals)
                c = statistics.median(c for _, c in vals)
                print(f"  {key}: wall {w:.3f} s (ratio {w / bw:.2f}x), cpu {c:.3f} s (ratio {c / bc:.2f}x), "
                      f"{sizes[key] / 1e6:.2f} MB  [target <= 1.2x]")

if __name__ == "__main__":
    main()
