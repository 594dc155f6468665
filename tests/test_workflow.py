"""The whole workflow, end to end: on the demo cohort and on real scanner data.

These are the slow tests (one workflow run each, shared by the module).
"""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys

from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import ROOT, checksums, run_workflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, testdata):
    """A cohort assembled from real data: CT (tilted GE + Philips), SEG + sources, GE DWI."""
    inp = tmp_path_factory.mktemp("real") / "in"
    shutil.copytree(testdata / "dcm_qa_ct" / "In", inp / "ct")
    shutil.copytree(testdata / "dcmqi" / "segmentations" / "ct-3slice", inp / "seg" / "ct-3slice")
    shutil.copy(testdata / "dcmqi" / "segmentations" / "liver.dcm", inp / "seg" / "liver.dcm")
    shutil.copytree(testdata / "dcm_qa_ge" / "In", inp / "dwi")
    (inp / "seg" / "README.txt").write_text("clutter")
    (inp / "dwi" / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 20)
    before = checksums(inp)
    out = inp.parent / "out"
    proc = run_workflow(str(inp), out, secret="test-secret-for-the-real-data-run")
    return inp, out, proc, before


def test_demo_run_completes_and_verifies(demo_run):
    out, _ = demo_run
    ver = json.loads((out / "share" / "verification.json").read_text())
    assert ver["status"] == "pass", ver
    assert (out / "share" / "qc" / "report.html").is_file()
    assert (out / "share" / "audit.yaml").is_file()


def test_demo_units_are_pseudonymous(demo_run):
    out, _ = demo_run
    units = pd.read_csv(out / "private" / "units.csv", dtype=str)
    assert len(units) >= 4
    for _, u in units.iterrows():
        assert u["orig_subject"] not in u["unit"]
        assert u["orig_scan"] not in u["unit"]
    share_paths = [str(p.relative_to(out / "share")) for p in (out / "share").rglob("*")]
    for name in units["orig_subject"]:
        assert not any(name in p for p in share_paths), name


def test_demo_kinds_and_outputs(demo_run):
    out, _ = demo_run
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    kinds = set(series["kind"])
    assert {"dwi", "ct_axial", "seg", "localizer"} <= kinds, kinds
    table = pd.read_csv(out / "share" / "tables" / "series.csv")
    units = pd.read_csv(out / "private" / "units.csv")
    assert len(table) == units["n_series"].sum() > 0          # one row per selected series
    assert not {"orig_unit", "orig_subject", "PatientID", "SeriesInstanceUID"} & set(table.columns)
    assert list((out / "share" / "nifti").rglob("*.nii.gz")), "no NIfTI written"
    assert list((out / "share" / "masks").rglob("*.nii.gz")), "no masks written"
    assert list((out / "share" / "dicom").rglob("*.dcm")), "no de-identified DICOM written"
    assert (out / "share" / "hdf5" / "cohort.h5").is_file()


def _stage_stamps(out, stage=None):
    """mtime of every stage directory's timestamp (Snakemake touches it when the job runs)."""
    root = out / "private" / "stages"
    pattern = f"{stage}/**/.snakemake_timestamp" if stage else "**/.snakemake_timestamp"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob(pattern)}


def test_demo_rerun_does_no_unit_work(demo_run):
    out, _ = demo_run
    before = _stage_stamps(out)
    assert {k.split("/")[0] for k in before} == {"deid", "dcm2niix", "ncct", "seg", "hdf5", "qc"}
    proc = run_workflow("demo", out, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    proc = run_workflow("demo", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert before == _stage_stamps(out), "an unchanged cohort re-ran unit jobs"


def test_report_and_summary_see_the_whole_chain(demo_run, tmp_path):
    """The checkpoint is settled on an unchanged input, so Snakemake's own views
    show every stage rule (report with runtimes, summary, --until)."""
    out, _ = demo_run
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(out),
           "--config", f"output_dir={out}"]
    summary = subprocess.run(cmd + ["--summary"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert summary.returncode == 0, summary.stderr[-3000:]
    for rule in ("deidentify", "convert_dcm2niix", "convert_ncct", "decode_seg", "export_hdf5", "qc_unit"):
        assert f"\t{rule}\t" in summary.stdout, rule
    report = subprocess.run(cmd + ["--report", str(tmp_path / "report.zip")], capture_output=True, text=True,
                            cwd=ROOT, timeout=900)
    assert report.returncode == 0, report.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    assert any(n.endswith(".png") for n in names)
    data = "".join(zipfile.ZipFile(tmp_path / "report.zip").read(n).decode("utf-8", "ignore")
                   for n in names if n.endswith(".js") or n.endswith(".html"))
    for rule in ("deidentify", "convert_dcm2niix", "decode_seg", "qc_unit"):
        assert rule in data, rule
    until = subprocess.run(cmd + ["-n", "--forcerun", "deidentify", "--until", "deidentify"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert until.returncode == 0, until.stderr[-3000:]
    assert "deidentify" in until.stdout and "convert_dcm2niix" not in until.stdout


def test_status_command(demo_run):
    out, _ = demo_run
    proc = subprocess.run([sys.executable, "-m", "dicomprep", "status", str(out)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert "units done" in proc.stdout and "verification: pass" in proc.stdout, proc.stdout + proc.stderr


def test_real_data_run(real_run):
    inp, out, proc, before = real_run
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert checksums(inp) == before, "the input tree was modified"
    ver = json.loads((out / "share" / "verification.json").read_text())
    assert ver["status"] == "pass", ver
    unreadable = pd.read_csv(out / "private" / "index" / "unreadable.csv")
    assert any("broken.dcm" in p for p in unreadable["relpath"])
    series = pd.read_parquet(out / "private" / "index" / "series.parquet")
    assert (series["kind"] == "seg").sum() == 1
    assert (series["kind"] == "dwi").sum() == 2
    assert (series["kind"] == "ct_axial").sum() >= 3


def test_real_data_refuses_to_start_without_secret(tmp_path, testdata):
    proc = run_workflow(str(testdata / "dcm_qa_ts" / "In"), tmp_path / "out")
    assert proc.returncode != 0
    assert "DICOMPREP_SECRET" in proc.stderr and "Traceback" not in proc.stderr


def _share_texts(share):
    """Every share/ file's bytes (gzip inflated, PNG/HDF5 pixel payloads included) and its path."""
    import gzip

    for path in sorted(p for p in share.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        yield str(path.relative_to(share)), data


def test_demo_planted_values_absent_from_share(demo_run):
    """Independent of the verifier: the demo's own list of planted values
    (names, IDs, dates in four spellings, UIDs, institution, serials, folders)
    appears in no share/ file and no share/ path."""
    out, _ = demo_run
    planted = json.loads((out / "demo-input" / "demo_manifest.json").read_text())["planted"]
    needles = set()
    for p in planted:
        value = str(p["value"]).strip()
        if p["kind"] == "time" or len(value) < 6:
            continue          # short tokens occur by chance in pixel bytes; the verifier covers them
        needles.add(value.lower())
        if p["kind"] == "date" and len(value) == 8:
            y, m, d = value[:4], value[4:6], value[6:]
            needles |= {f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"}
    assert len(needles) > 40
    hits = []
    for rel, data in _share_texts(out / "share"):
        low_path, low = rel.lower(), data.lower()
        for n in needles:
            if n in low_path or n.encode("utf-8") in low or n.encode("latin-1", "ignore") in low:
                hits.append((rel, n[:3] + "…"))
    assert not hits, hits[:20]


def test_built_wheel_runs_the_demo_from_an_empty_folder_byte_identical(demo_run, tmp_path):
    """`pip install dicomprep` (a built wheel, no checkout) runs the workflow, and its
    share/ equals the checkout's run byte for byte (another core count, too). Runs
    before the setting-change test below, whose withdrawals the audit records."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(wheels)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "pydicom").is_dir())
    (site / "deps.pth").write_text(str(deps) + "\n")   # the dependencies, not the editable dicomprep
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q",
                          str(next(wheels.glob("dicomprep-*.whl")))], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    empty = tmp_path / "anywhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DICOMPREP_SECRET", "DICOMPREP_WORKFLOW")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(venv / "bin" / "dicomprep"), "run", "demo", "out", "--cores", "1"], cwd=empty,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import dicomprep; print(dicomprep.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True)
    assert str(venv) in where.stdout, where.stdout
    ours, theirs = checksums(demo_run[0] / "share"), checksums(empty / "out" / "share")
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    assert not differ, differ[:20]


def test_changed_setting_reruns_that_stage_only_and_removes_stale_outputs(demo_run):
    """Switching to BIDS names re-runs the dcm2niix stage (and the unit QC that
    reads it), nothing else; the previous default-named files are gone from share/."""
    out, _ = demo_run
    before = sorted(p.name for p in (out / "share" / "nifti").rglob("*.nii.gz") if "_ct" not in p.name)
    assert before and not any(n.startswith("sub-") for n in before)
    untouched = {s: _stage_stamps(out, s) for s in ("deid", "ncct", "seg", "hdf5")}
    redone = _stage_stamps(out, "dcm2niix")
    proc = run_workflow("demo", out, "--config", "convert.dcm2niix.naming=bids")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {s: _stage_stamps(out, s) for s in untouched} == untouched
    after_stamps = _stage_stamps(out, "dcm2niix")
    assert after_stamps.keys() == redone.keys() and all(after_stamps[k] > redone[k] for k in redone)
    after = sorted(p.name for p in (out / "share" / "nifti").rglob("*.nii.gz") if "_ct" not in p.name)
    assert after and all(n.startswith("sub-") for n in after), after
    assert json.loads((out / "share" / "verification.json").read_text())["status"] == "pass"
    # and back: the default names return, the BIDS-like ones leave share/ (later tests use this run)
    proc = run_workflow("demo", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = sorted(p.name for p in (out / "share" / "nifti").rglob("*.nii.gz") if "_ct" not in p.name)
    assert again == before
