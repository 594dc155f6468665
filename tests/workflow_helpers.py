"""Run the whole workflow once per test session (it takes a minute or two)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checksums(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_workflow(input_dir: str, out: Path, *extra: str, secret: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DICOMPREP_SECRET", None)
    if secret:
        env["DICOMPREP_SECRET"] = secret
    cmd = [sys.executable, "-m", "dicomprep", "run", input_dir, str(out), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)


def index_job(input_dir: Path | str, out: Path | str, *, config: dict, log: str | None = None, threads: int = 1):
    """Rule ``index``'s adapter (``stages.index``) as the workflow calls it, for ``out``."""
    from dicomprep import stages

    idx = Path(out) / "private/index"
    return stages.index(flag=[], instances=str(idx / "instances.parquet"), series=str(idx / "series.parquet"),
                        unreadable=str(idx / "unreadable.csv"), input_dir=str(input_dir), input_state="",
                        settings="", log=log, config=config, threads=threads)
