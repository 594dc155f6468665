"""The demo through SLURM (`dicomprep run demo OUT --cluster slurm`) against
the same demo run locally (`dicomprep run demo OUT --cores 2`), measured in
the same run, one after the other.

Target (issue 14): the cluster run within 2x the local run's wall time on a
one-node cluster (start one with `sudo bash .ci/slurm-up`). Also checks that
share/ is byte-identical and counts the sbatch submissions.

    python benchmarks/bench_slurm.py [CORES]
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(out: Path, *extra: str) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DICOMPREP_SECRET", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dicomprep", "run", "demo", str(out), *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run {' '.join(extra)} failed:\n{proc.stderr[-4000:]}")
    return took, proc.stdout + proc.stderr


def main() -> None:
    cores = sys.argv[1] if len(sys.argv) > 1 else "2"
    if shutil.which("sinfo") is None:
        sys.exit("no SLURM here (sinfo not found): start a one-node cluster with `sudo bash .ci/slurm-up`.")
    with tempfile.TemporaryDirectory() as tmp:
        local_s, _ = run(Path(tmp) / "local", "--cores", cores)
        slurm_s, log = run(Path(tmp) / "slurm", "--cores", cores, "--cluster", "slurm")
        same = checksums(Path(tmp) / "local" / "share") == checksums(Path(tmp) / "slurm" / "share")
    jobs = re.findall(r"submitted with SLURM jobid \d+ \(log: \S+/(group_unit|rule_\w+)", log)
    print(f"baseline local demo run (--cores {cores}): {local_s:.1f} s")
    print(f"SLURM demo run (--cluster slurm):        {slurm_s:.1f} s  "
          f"({len(jobs)} sbatch jobs: {jobs.count('group_unit')} unit groups)")
    print(f"ratio SLURM / local: {slurm_s / local_s:.2f} (target <= 2.0); share/ identical: {same}")


if __name__ == "__main__":
    main()
