"""The `dicomprep` command on real data: index, ls, export; errors as sentences."""
from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT


def dicomprep(*args, env_extra=None):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "dicomprep", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, testdata):
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = dicomprep("index", testdata / "dcm_qa_ge" / "In", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_ls_levels_and_where(indexed):
    proc = dicomprep("ls", indexed, "series", "--csv")
    table = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    assert len(table) == 2 and set(table["kind"]) == {"dwi"}
    proc = dicomprep("ls", indexed, "series", "--where", "SeriesNumber=2", "--csv")
    assert len(pd.read_csv(pd.io.common.StringIO(proc.stdout))) == 1
    proc = dicomprep("ls", indexed, "patients", "--csv")
    patients = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    assert len(patients) == 1 and patients["n_series"].iloc[0] == 2
    proc = dicomprep("ls", indexed, "series", "--where", "Modalty=MR")
    assert proc.returncode == 2 and "no column 'Modalty'" in proc.stderr and "Traceback" not in proc.stderr
    assert "config:" not in proc.stderr


def test_api_matches_cli(indexed):
    import dicomprep as dp

    idx = dp.open_index(indexed)
    assert len(idx.series(Modality="MR")) == 2
    assert len(idx.instances()) == 28
    assert len(idx.studies()) == 1


def test_export_nifti_matches_dcm2niix_reference_in_world(indexed, testdata, tmp_path):
    import dicomprep as dp

    idx = dp.open_index(indexed)
    ser = idx.series(SeriesNumber=1).iloc[0]
    proc = dicomprep("export", indexed, ser["series_key"], "--format", "nifti", "--dest", tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = nib.load(next(tmp_path.glob("*.nii.gz")))
    ref = nib.load(next((testdata / "dcm_qa_ge" / "Ref").glob("Ax_DWI_TENSOR_R2_1.nii*")))
    # Same voxels at the same world positions: reorient both to RAS+ and compare.
    a, b = nib.as_closest_canonical(ours), nib.as_closest_canonical(ref)
    assert a.shape == b.shape
    assert np.allclose(a.affine, b.affine, atol=1e-3)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_unknown_series_is_a_sentence(indexed, tmp_path):
    proc = dicomprep("export", indexed, "nope", "--format", "csv", "--dest", tmp_path)
    assert proc.returncode == 2 and "no series 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_index_of_missing_folder_is_a_sentence(tmp_path):
    proc = dicomprep("index", tmp_path / "missing", tmp_path / "out")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr


def test_snakemake_config_flag_after_double_dash_joins_dicomprep_overrides(tmp_path, monkeypatch):
    """Issue 12.6: `dicomprep run IN OUT -- --config key=value` used to reach Snakemake and end
    in its traceback; the pairs now join dicomprep's own overrides (validated, written to
    the override file), and the other pass-through arguments still reach Snakemake."""
    import yaml

    from dicomprep import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, **_: calls.append(cmd) or 0)
    out = tmp_path / "out"
    assert cli.main(["run", "demo", str(out), "--", "--config", "convert.ncct.spacing_mm=1.5",
                     "qc.enabled=false", "--keep-going"]) == 0
    nested = yaml.safe_load((out / ".snakemake" / "dicomprep-overrides.yaml").read_text())
    assert nested["convert"]["ncct"]["spacing_mm"] == 1.5 and nested["qc"]["enabled"] is False
    assert calls[0][-1] == "--keep-going" and "--config" not in calls[0]
    assert cli.split_passthrough_config(["-C", "a=1", "--config=b=2", "-n"]) == (["a=1", "b=2"], ["-n"])


def test_bad_passthrough_config_is_a_sentence(tmp_path):
    proc = dicomprep("run", "demo", tmp_path / "o", "--", "--config", "convert.ncct.spacing_mm=-3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "convert.ncct.spacing_mm" in proc.stderr
    proc = dicomprep("run", "demo", tmp_path / "o", "--", "--config", "--dry-run")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_output_folder_is_a_sentence(tmp_path):
    """An output folder that cannot be made (here: below a file) ends in one sentence, not a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = dicomprep("run", "demo", blocker / "out", "-n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(blocker / "out") in proc.stderr and "write to it" in proc.stderr


def test_bad_cores_is_refused_before_the_output_folder_is_made(tmp_path):
    proc = dicomprep("run", "demo", tmp_path / "o", "--cores", "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "number of cores" in proc.stderr
    assert not (tmp_path / "o").exists()
    for bad in ("0", "-2", "1.5"):
        assert dicomprep("run", "demo", tmp_path / "o", "--cores", bad).returncode == 2
    assert not (tmp_path / "o").exists()


def test_output_into_a_closed_pipe_is_silent(indexed):
    """`dicomprep ls OUT instances | head -n 1`: the reader stops early; no message about
    folders or disks (it printed one), exit status 0."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    # the reader is gone before the first line is written (`true` reads nothing)
    cmd = f"'{sys.executable}' -m dicomprep ls '{indexed}' instances --csv | true; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.stdout.strip() == "0" and proc.stderr == "", proc.stderr
