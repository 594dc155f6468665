"""Dry run (`snakemake -n`) of a cohort of 5,000 units from a synthetic index.

Every unit has a DWI, a CT and a SEG series, so it gets all six stage jobs
(deidentify, convert_dcm2niix, convert_ncct, decode_seg, export_hdf5, qc_unit).
Target (issue 11): under 30 s for 5,000 units, where a bare Snakefile with a
checkpoint and six one-line rules per unit took 24 s; issue 15: under 60 s for
10,000. The baseline is that bare Snakefile (written below), dry-run over the
same number of units in the same run; the script prints both times (wall and
CPU, since CPU time is what a loaded machine does not inflate) and the ratio.

    python benchmarks/bench_dryrun.py [N_UNITS]

``BENCH_KINDS=dwi``: units of one DWI series instead (four stage jobs each:
deidentify, convert_dcm2niix, export_hdf5, qc_unit), against a bare Snakefile
with the same four rules per unit.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.select import build_units  # noqa: E402


#: The series of every synthetic unit: (number, kind, modality).
SERIES = ((0, "dwi", "MR"), (1, "ct_axial", "CT"), (2, "seg", "SEG"))


def synthetic_index(out: Path, n_units: int, series: tuple = SERIES) -> None:
    rows_s, rows_i = [], []
    for u in range(n_units):
        orig_unit = f"site{u % 7}/dicom/SE/subj{u:05d}/scan1"
        for s, kind, modality in series:
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


BARE_SNAKEFILE = """
import csv
STAGES = config.get("stages", ["dcm2niix", "ncct", "seg", "hdf5"])

checkpoint select:
    output: "units.csv"
    shell: "echo unit > {output}"

def units(wildcards):
    with open(checkpoints.select.get().output[0]) as f:
        return [f"stages/qc/{r['unit']}.out" for r in csv.DictReader(f)]

rule all:
    input: units

rule deid:
    input: "units.csv"
    output: "stages/deid/{unit}.out"
    shell: "touch {output}"

for s in STAGES:
    rule:
        name: s
        input: "stages/deid/{unit}.out"
        output: f"stages/{s}/{{unit}}.out"
        shell: "touch {output}"

rule qc:
    input: expand("stages/{s}/{{unit}}.out", s=STAGES)
    output: "stages/qc/{unit}.out"
    shell: "touch {output}"
"""


def bare_workflow(out: Path, n_units: int) -> Path:
    """The baseline: a checkpoint and six one-line rules per unit, nothing else."""
    out.mkdir(parents=True)
    (out / "Snakefile").write_text(BARE_SNAKEFILE)
    (out / "units.csv").write_text("unit\n" + "".join(f"u{i}\n" for i in range(n_units)))
    return out / "Snakefile"


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the child) and planned jobs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit("dry run failed")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    jobs = [ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("total")]
    return wall, cpu, int(jobs[0]) if jobs else 0


def dry_run(out: Path, inp: Path) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n",
           "--directory", str(out), "--cores", "2", "--config", f"input_dir={inp}", f"output_dir={out}",
           "refresh_index=false", "--rerun-triggers", "mtime"]
    return timed(cmd, {"DICOMPREP_SECRET": "bench-secret-0123456789abcdef", "PATH": "/usr/bin:/bin"})


def bare_dry_run(snakefile: Path, stages: list[str]) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "-n",
           "--directory", str(snakefile.parent), "--cores", "2", "all", "--config", f"stages={stages}"]
    return timed(cmd, {"PATH": "/usr/bin:/bin"})


def main() -> None:
    n_units = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    one_dwi = os.environ.get("BENCH_KINDS") == "dwi"
    series, stages = ((SERIES[:1], ["dcm2niix", "hdf5"]) if one_dwi
                      else (SERIES, ["dcm2niix", "ncct", "seg", "hdf5"]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = tmp / "in"
        inp.mkdir()
        big = tmp / "big"
        synthetic_index(big, n_units, series)
        for f in (big / "private" / "index").iterdir():  # older than the unit table
            t = time.time() - 3600
            os.utime(f, (t, t))
        bare = bare_workflow(tmp / "bare", n_units)
        base_wall, base_cpu, base_jobs = bare_dry_run(bare, stages)
        wall, cpu, jobs = dry_run(big, inp)
    print(f"dry run, {n_units} units: dicomprep {jobs} jobs {wall:.1f} s wall / {cpu:.1f} s CPU; "
          f"bare Snakefile (checkpoint + {len(stages) + 2} rules per unit) {base_jobs} jobs {base_wall:.1f} s wall / "
          f"{base_cpu:.1f} s CPU; ratio {cpu / base_cpu:.2f}x CPU, {wall / base_wall:.2f}x wall "
          f"(target: 30 s where the bare one takes 24 s, i.e. <= 1.25x)")


if __name__ == "__main__":
    main()
