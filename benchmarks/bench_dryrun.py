"""Dry run (`snakemake -n`) of a cohort of 5,000 units from a synthetic index.

Every unit has a DWI, a CT and a SEG series, so it gets all six stage jobs
(deidentify, convert_dcm2niix, convert_ncct, decode_seg, export_hdf5, qc_unit).
Target (issue 11): under 30 s for 5,000 units; issue 15: under 60 s for 10,000. Baseline printed alongside: `snakemake -n` of the
same Snakefile on an empty cohort (parse + checkpoint overhead only), measured
in the same run.

    python benchmarks/bench_dryrun.py [N_UNITS]
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.select import build_units  # noqa: E402


def synthetic_index(out: Path, n_units: int) -> None:
    rows_s, rows_i = [], []
    for u in range(n_units):
        orig_unit = f"site{u % 7}/dicom/SE/subj{u:05d}/scan1"
        for s, kind, modality in ((0, "dwi", "MR"), (1, "ct_axial", "CT"), (2, "seg", "SEG")):
            key = f"{u:05d}{s}"
            rows_s.append({
                "orig_unit": orig_unit, "orig_group": f"site{u % 7}", "orig_sequence": "SE",
                "orig_subject": f"subj{u:05d}", "orig_scan": "scan1", "series_key": key,
                "series_id": f"s{s + 1:03d}", "SeriesNumber": s + 1, "Modality": modality, "kind": kind,
                "PatientID": f"ID{u:05d}", "IssuerOfPatientID": "", "StudyInstanceUID": f"1.2.{u}",
                "SeriesInstanceUID": f"1.2.{u}.{s}",
                "n_instances": 1,
            })
            rows_i.append({"path": f"/in/{u}/{s}.dcm", "series_key": key, "orig_unit": orig_unit})
    idx = out / "private" / "index"
    idx.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows_s).to_parquet(idx / "series.parquet")
    pd.DataFrame(rows_i).to_parquet(idx / "instances.parquet")
    pd.DataFrame(columns=["path", "relpath", "reason"]).to_csv(idx / "unreadable.csv", index=False)
    build_units(out, {"anonymisation": True, "deid": {}, "select": {}}, demo=True)


def dry_run(out: Path, inp: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n",
           "--directory", str(out), "--cores", "2", "--config", f"input_dir={inp}", f"output_dir={out}",
           "refresh_index=false", "--rerun-triggers", "mtime"]
    env = {"DICOMPREP_SECRET": "bench-secret-0123456789abcdef", "PATH": "/usr/bin:/bin"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit("dry run failed")
    jobs = [ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("total")]
    return dt, int(jobs[0]) if jobs else 0


def main() -> None:
    n_units = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = tmp / "in"
        inp.mkdir()
        big, empty = tmp / "big", tmp / "empty"
        synthetic_index(big, n_units)
        synthetic_index(empty, 1)
        for d in (big, empty):  # make the index tables older than the unit table
            for f in (d / "private" / "index").iterdir():
                t = time.time() - 3600
                import os
                os.utime(f, (t, t))
        base, base_jobs = dry_run(empty, inp)
        ours, jobs = dry_run(big, inp)
    print(f"dry run, {n_units} units ({jobs} jobs planned): {ours:.1f} s (target < 30 s); "
          f"1 unit ({base_jobs} jobs): {base:.1f} s; ratio {ours / base:.1f}x")


if __name__ == "__main__":
    main()
