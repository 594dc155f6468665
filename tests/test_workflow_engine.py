"""The engine on real data: withdrawn and added units, a crash resumed by the
same command, a concurrent run refused, and the built wheel running the demo.

Each test runs the whole workflow (slow); cohorts are small copies of
../shared/data arranged as exam folders (one unit per folder).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import ROOT, checksums, run_workflow

pytestmark = pytest.mark.slow
SECRET = "engine-test-secret-0123456789abcdef"


def _exam(testdata: Path, dest: Path, source: str) -> None:
    """One exam folder holding a copy of a real series folder."""
    shutil.copytree(testdata / source, dest)


def _units(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "private" / "units.csv", dtype=str, keep_default_na=False)


def _unit_files(out: Path, unit: str) -> list[str]:
    share = out / "share"
    return [str(p.relative_to(share)) for p in share.rglob("*") if p.is_file() and unit in str(p.relative_to(share))]


def _stage_stamps(out: Path, unit: str) -> dict[str, int]:
    root = out / "private" / "stages"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob(f"*/{unit}/.snakemake_timestamp")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, testdata):
    base = tmp_path_factory.mktemp("engine")
    inp = base / "in"
    _exam(testdata, inp / "exam_dwi", "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2")
    _exam(testdata, inp / "exam_ct", "dcmqi/segmentations/ct-3slice")
    before = checksums(inp)
    out = base / "out"
    proc = run_workflow(str(inp), out, secret=SECRET)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert checksums(inp) == before
    return base, inp, out


def test_withdrawn_unit_leaves_share_and_added_unit_runs_alone(cohort, testdata):
    base, inp, out = cohort
    units = _units(out)
    assert len(units) == 2
    gone = units[units["orig_unit"].str.contains("exam_ct")].iloc[0]["unit"]
    kept = units[units["orig_unit"].str.contains("exam_dwi")].iloc[0]["unit"]
    assert _unit_files(out, gone)
    kept_stamps = _stage_stamps(out, kept)
    assert kept_stamps
    shutil.rmtree(inp / "exam_ct")                                    # subject withdrawn
    _exam(testdata, inp / "exam_dwi2", "dcm_qa_ge/In/02_Ax_DWI_TENSOR_R3")    # and a new one arrives
    proc = run_workflow(str(inp), out, secret=SECRET)
    assert proc.returncode == 0, proc.stderr[-6000:]
    now = _units(out)
    assert gone not in set(now["unit"]) and kept in set(now["unit"]) and len(now) == 2
    assert _unit_files(out, gone) == [], "a withdrawn unit is still shared"
    assert _stage_stamps(out, kept) == kept_stamps, "adding a unit re-ran an unchanged unit"
    added = next(u for u in now["unit"] if u != kept)
    assert _unit_files(out, added)
    audit = (out / "share" / "audit.yaml").read_text()
    assert "withdrawn:" in audit and gone in audit
    ver = json.loads((out / "share" / "verification.json").read_text())
    assert ver["status"] == "pass", ver


def _start(inp: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DICOMPREP_SECRET=SECRET)
    return subprocess.Popen([sys.executable, "-m", "dicomprep", "run", str(inp), str(out), "--cores", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path_glob, root: Path, timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if list(root.glob(path_glob)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{path_glob} never appeared under {root}")


def test_kill9_is_resumed_by_the_same_command_and_a_live_run_is_refused(cohort):
    base, inp, _ = cohort
    out = base / "out-crash"
    first = _start(inp, out)
    try:
        _wait_for("private/logs/deid/**/*.log", out)
        # a second run on the same folder is refused at once, without touching the first one's files
        state = {p: p.stat().st_mtime_ns for p in (out / ".snakemake").glob("dicomprep-*")}
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DICOMPREP_SECRET=SECRET)
        second = subprocess.run([sys.executable, "-m", "dicomprep", "run", str(inp), str(out), "--cores", "1"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0 and "right now" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert state == {p: p.stat().st_mtime_ns for p in (out / ".snakemake").glob("dicomprep-*")}
    finally:
        os.killpg(first.pid, signal.SIGKILL)                          # the crash
        first.wait()
    assert list((out / ".snakemake" / "locks").iterdir()), "expected Snakemake's lock to be left behind"
    proc = run_workflow(str(inp), out, secret=SECRET)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "stale" in proc.stderr
    assert json.loads((out / "share" / "verification.json").read_text())["status"] == "pass"
