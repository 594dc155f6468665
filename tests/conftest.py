"""Shared fixtures: the real test data and a clean output folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def testdata_dir() -> Path:
    """``DICOMPREP_TESTDATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("DICOMPREP_TESTDATA")
    return Path(env) if env else (ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def testdata() -> Path:
    path = testdata_dir()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set DICOMPREP_TESTDATA)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One full workflow run on the demo cohort, shared by every test that needs it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from workflow_helpers import run_workflow

    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_workflow("demo", out)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out, proc
