"""Benchmark: the rule chain (one job per stage) vs the one-job-per-unit workflow it replaced.

Standalone: ``python benchmarks/bench_rulechain.py`` (test data from
``DICOMPREP_TESTDATA``, default ``../shared/data``; ``BENCH_CORES``, default 2;
``BENCH_OLD_REF``, default ``26c1468``, the last commit with ``pipeline.py``).

Issue 11 asks that the whole workflow on a ~1,000-file real cohort is not
slower with the rule chain than before it. This script builds the cohort of
``bench_endtoend.py`` (about 1,200 real files, several vendors, CT and MR),
checks the old commit out into a temporary git worktree, and runs
``dicomprep run COHORT OUT --cores N`` with each version in the same run,
same machine, same secret. It prints both wall times, the ratio (target
<= 1.0x, i.e. not slower), the number of jobs each ran, and the cost of one
job's entry: starting Python and importing the stage adapters
(``dicomprep.entry`` + ``dicomprep.stages``), which every stage job pays.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_endtoend import build_cohort  # noqa: E402

OLD_REF = os.environ.get("BENCH_OLD_REF", "26c1468")


def run(src: Path, cohort: Path, out: Path, cores: str) -> tuple[float, int]:
    """Wall seconds of ``dicomprep run`` from the checkout ``src``, and its job count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src / "src")
    env.setdefault("DICOMPREP_SECRET", "benchmark-secret-0123456789abcdef")
    cmd = [sys.executable, "-m", "dicomprep", "run", str(cohort), str(out), "--cores", cores]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        raise SystemExit(f"dicomprep run from {src} failed")
    text = proc.stdout + proc.stderr
    jobs = text.count("Finished jobid") or text.count("Finished job ")
    return wall, jobs


def entry_seconds(src: Path, repeats: int = 5) -> float:
    """Median seconds of a Python start plus the imports a stage job's script makes."""
    env = dict(os.environ, PYTHONPATH=str(src / "src"))
    code = "import dicomprep.entry, dicomprep.stages"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> int:
    data = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
    cores = os.environ.get("BENCH_CORES", "2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = build_cohort(data, tmp / "cohort")
        old = tmp / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), OLD_REF], cwd=ROOT, check=True)
        try:
            old_wall, old_jobs = run(old, tmp / "cohort", tmp / "out-old", cores)
            new_wall, new_jobs = run(ROOT, tmp / "cohort", tmp / "out-new", cores)
            entry = entry_seconds(ROOT)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    print(f"{len(files)} files, --cores {cores}")
    print(f"one job per unit ({OLD_REF}): {old_wall:.1f} s, {old_jobs} jobs")
    print(f"rule chain (this checkout):  {new_wall:.1f} s, {new_jobs} jobs")
    print(f"ratio {new_wall / old_wall:.2f}x (target <= 1.0x: not slower)")
    print(f"a stage job's entry (python start + dicomprep.entry/stages imports): {entry * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
