"""Benchmark: `dicomprep run` end to end vs the peer chain dicognito → dcm2niix.

Standalone: ``python benchmarks/bench_endtoend.py [COHORT]`` (test data from
``DICOMPREP_TESTDATA``, default ``../shared/data``; ``BENCH_CORES``, default 2).
``COHORT``: run both sides on a copy of that folder instead (held-out data; its
gzip-wrapped files inflated, clutter left out, the folder itself untouched).

1. Builds a cohort of about 1,200 real files in a temporary folder, one exam
   folder per study (exam-folder layout): GE and Siemens fMRI (dcm_qa_nih), GE
   DTI (dcm_qa_ge), GE and Philips CT (dcm_qa_ct), Philips DTI
   (dcm_qa_philips_dwi, un-gzipped). Clutter (README, DICOMDIR) is left out so
   both sides see the same DICOM files.
2. Peer chain, single process: dicognito's Python API over every file
   (``pydicom.dcmread`` → ``Anonymizer().anonymize`` → ``save_as``), then the
   pinned PyPI ``dcm2niix`` binary over the anonymized tree (``-z y``).
3. ``dicomprep run COHORT OUT --cores N`` with the default configuration.

Prints both times, their ratio (target ≤ 1.5×) and where dicomprep's time
went: seconds per rule summed over its jobs (the rules' Snakemake
``benchmark:`` files, ``private/benchmarks/``), and the wall time of each
rule from the run's log.
"""
from __future__ import annotations

import collections
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep import dicomio  # noqa: E402

#: (source folder under the test data, exam folder name in the cohort)
SOURCES = [
    ("dcm_qa_nih/In/20180918GE", "exam_01"),
    ("dcm_qa_nih/In/20180918Si", "exam_02"),
    ("dcm_qa_ge/In", "exam_03"),
    ("dcm_qa_ct/In/GE", "exam_04"),
    ("dcm_qa_ct/In/Philips", "exam_05"),
    ("dcm_qa_philips_dwi/In/cl/DICOM", "exam_06"),
]
SKIP_NAMES = {"DICOMDIR", "DIRFILE", "LICENSE", "LICENSE.txt"}


def build_cohort(data: Path, dest: Path, sources: list[tuple[str, str]] = SOURCES) -> list[Path]:
    """Copy (un-gzipping) the DICOM files of ``sources`` (folder under ``data``,
    exam folder name) into ``dest/<exam>/...``."""
    files = []
    for src, exam in sources:
        folder = data / src
        if not folder.is_dir():
            print(f"  (skipped {src}: not in the test data)")
            continue
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.name in SKIP_NAMES or p.suffix.lower() in dicomio.CLUTTER_SUFFIXES:
                continue
            rel = p.relative_to(folder)
            target = dest / exam / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix == ".gz":
                target = target.with_suffix("")
                target.write_bytes(gzip.decompress(p.read_bytes()))
            else:
                shutil.copyfile(p, target)
            files.append(target)
    return files


def run_peer(cohort: Path, files: list[Path], work: Path) -> dict:
    """dicognito over every file, then dcm2niix over the anonymized tree."""
    import pydicom
    from dicognito.anonymizer import Anonymizer

    anon_dir, nii_dir = work / "peer_anon", work / "peer_nifti"
    nii_dir.mkdir(parents=True)
    anonymizer = Anonymizer()
    t0 = time.perf_counter()
    skipped = 0
    for p in files:
        try:
            ds = pydicom.dcmread(p)
        except Exception:  # noqa: BLE001 - not DICOM: the peer skips it too
            skipped += 1
            continue
        anonymizer.anonymize(ds)
        target = anon_dir / p.relative_to(cohort)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
    t_anon = time.perf_counter() - t0
    exe = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")
    t1 = time.perf_counter()
    proc = subprocess.run([exe, "-z", "y", "-f", "%p_%s", "-o", str(nii_dir), str(anon_dir)],
                          capture_output=True, text=True)
    t_conv = time.perf_counter() - t1
    if proc.returncode not in (0,):
        print(f"  dcm2niix exit code {proc.returncode}: {proc.stderr[-500:]}")
    return {"dicognito": t_anon, "dcm2niix": t_conv, "total": t_anon + t_conv, "skipped": skipped,
            "nifti": len(list(nii_dir.glob("*.nii.gz")))}


def run_dicomprep(cohort: Path, out: Path, cores: str) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("DICOMPREP_SECRET", "benchmark-secret-0123456789abcdef")
    cmd = [sys.executable, "-m", "dicomprep", "run", str(cohort), str(out), "--cores", cores]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0, proc


def stage_seconds(out: Path) -> dict[str, tuple[int, float]]:
    """Jobs and seconds per rule, summed over units, from the rules' Snakemake
    ``benchmark:`` files (``private/benchmarks/<rule>[/<unit>].tsv``)."""
    total: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    root = out / "private" / "benchmarks"
    for f in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        rel = f.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else f.stem
        lines = f.read_text().splitlines()
        if len(lines) > 1 and lines[0].startswith("s\t"):
            total[rule][0] += 1
            total[rule][1] += float(lines[1].split("\t")[0])
    return {rule: (n, s) for rule, (n, s) in total.items()}


def rule_wall_times(log_text: str) -> dict[str, tuple[int, float]]:
    """Wall seconds per rule from Snakemake's log ("[date]" then "rule X:" ... "Finished job N.")."""
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")
    start: dict[str, tuple[str, float]] = {}
    per_rule: dict[str, list[float]] = collections.defaultdict(list)
    now = None
    pending_rule = None
    for line in log_text.splitlines():
        m = stamp.match(line)
        if m:
            now = time.mktime(time.strptime(m.group(1).replace("  ", " "), "%a %b %d %H:%M:%S %Y"))
            continue
        r = re.match(r"^(?:local)?rule (\w+):", line)
        if r:
            pending_rule = r.group(1)
            continue
        j = re.match(r"^\s+jobid: (\d+)", line)
        if j and pending_rule and now is not None:
            start[j.group(1)] = (pending_rule, now)
            pending_rule = None
            continue
        f = re.match(r"^Finished job(?:id:)? (\d+)", line)
        if f and f.group(1) in start and now is not None:
            rule, t0 = start.pop(f.group(1))
            per_rule[rule].append(now - t0)
    return {rule: (len(v), sum(v)) for rule, v in per_rule.items()}


def main(argv: list[str]) -> int:
    data = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
    cores = os.environ.get("BENCH_CORES", "2")
    given = Path(argv[1]).resolve() if len(argv) > 1 else None
    if given is not None and not given.is_dir():
        print(f"{given}: not a folder (give the cohort folder to benchmark, or nothing for the built-in one)")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        tmp = Path(tmp)
        cohort = tmp / "cohort"
        if given is None:
            files = build_cohort(data, cohort)
            what = f"{len(SOURCES)} exam folders (GE, Siemens, Philips; MR fMRI/DTI, CT)"
        else:
            files = build_cohort(given.parent, cohort, [(given.name, given.name)])
            what = f"copied from {given}"
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"cohort: {len(files)} files, {mb:.1f} MB, {what}")
        for p in files:  # warm the page cache for both sides alike
            p.read_bytes()
        peer = run_peer(cohort, files, tmp)
        print(f"peer chain: dicognito {peer['dicognito']:.1f} s + dcm2niix {peer['dcm2niix']:.1f} s "
              f"= {peer['total']:.1f} s ({peer['nifti']} NIfTI files, {peer['skipped']} files not DICOM)")
        seconds, proc = run_dicomprep(cohort, tmp / "out", cores)
        if proc.returncode != 0:
            print(f"dicomprep run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            return 1
        print(f"dicomprep run (--cores {cores}, default config): {seconds:.1f} s")
        print(f"ratio dicomprep / peer chain: {seconds / peer['total']:.2f}x (target <= 1.5x)")
        stages = stage_seconds(tmp / "out")
        if stages:
            busy = sum(s for _, s in stages.values())
            print(f"dicomprep seconds per rule from its benchmark files, summed over jobs ({busy:.1f} s in all):")
            for rule, (n, s) in sorted(stages.items(), key=lambda kv: -kv[1][1]):
                print(f"  {rule:32s} {n:4d} job(s) {s:7.1f} s  {s / busy:5.1%}")
        rules = rule_wall_times(proc.stderr)
        if rules:
            print("Snakemake rule wall time (jobs, seconds summed over jobs, from the run's log):")
            for rule, (n, s) in sorted(rules.items(), key=lambda kv: -kv[1][1]):
                print(f"  {rule:32s} {n:4d} job(s) {s:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
