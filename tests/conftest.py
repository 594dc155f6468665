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
