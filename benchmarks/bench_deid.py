"""Benchmark: dicomprep de-identification vs dicognito (files/s) and vs a plain copy (MB/s).

Standalone: ``python benchmarks/bench_deid.py [FOLDER]`` (default: dcm_qa_nih/In of
the shared test data, 608 files). Single process. Each tool reads every file,
de-identifies it and writes it to a temporary folder (ours: ``deidentify_file``,
the workflow's path, basic profile with default options; dicognito: its Python API
``Anonymizer().anonymize`` between ``pydicom.dcmread`` and ``save_as``); the plain
copy uses :func:`shutil.copyfile`. ``BENCH_REPEATS`` (default 2) interleaved rounds of
the three; the best time of each, and the copy/dicomprep ratio of every round.
Prints files/s and MB/s of each and the ratios.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep import dicomio  # noqa: E402
from dicomprep.deid.dataset import make_deidentifier  # noqa: E402
from dicomprep.deid.instance import deidentify_file  # noqa: E402


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files under ``folder`` (clutter such as README-*.txt is skipped)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() not in dicomio.CLUTTER_SUFFIXES and p.name != "DICOMDIR":
            out.append(p)
    return out


def run_dicomprep(files: list[Path], out: Path) -> float:
    deid = make_deidentifier({"deid": {}}, b"benchmark-secret-0123456789abcdef")
    t0 = time.perf_counter()
    for i, p in enumerate(files):
        deidentify_file(deid, p, out / f"{i:05d}.dcm")  # read -> de-identify -> write (atomic)
    return time.perf_counter() - t0


def run_dicognito(files: list[Path], out: Path) -> float:
    import pydicom
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    t0 = time.perf_counter()
    for i, p in enumerate(files):
        ds = pydicom.dcmread(p)
        anonymizer.anonymize(ds)
        ds.save_as(out / f"{i:05d}.dcm")
    return time.perf_counter() - t0


def run_copy(files: list[Path], out: Path) -> float:
    t0 = time.perf_counter()
    for i, p in enumerate(files):
        shutil.copyfile(p, out / f"{i:05d}.dcm")
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    data = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
    folder = Path(argv[1]) if len(argv) > 1 else data / "dcm_qa_nih" / "In"
    files = dicom_files(folder)
    if not files:
        print(f"no DICOM files under {folder}")
        return 1
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    tools = (("copy", run_copy), ("dicomprep", run_dicomprep), ("dicognito", run_dicognito))
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    for _ in range(repeats):  # interleaved rounds: the disk's write-back state swings, and every
        for name, fn in tools:  # tool of a round meets about the same one; best of N for each
            with tempfile.TemporaryDirectory() as tmp:
                for p in files:  # warm the page cache so every tool reads from memory
                    p.read_bytes()
                times[name].append(fn(files, Path(tmp)))
    results = {name: min(t) for name, t in times.items()}
    round_ratios = [c / d for c, d in zip(times["copy"], times["dicomprep"])]
    n = len(files)
    print(f"{n} files, {megabytes:.1f} MB from {folder}")
    for name, seconds in results.items():
        print(f"{name:10s} {seconds:7.2f} s  {n / seconds:8.1f} files/s  {megabytes / seconds:8.1f} MB/s")
    ratio = results["dicognito"] / results["dicomprep"]
    print(f"dicomprep vs dicognito: {ratio:.1f}x files/s (target >= 10x)")
    print(f"dicomprep vs plain copy: {results['copy'] / results['dicomprep']:.2f}x MB/s "
          f"({megabytes / results['dicomprep']:.1f} vs {megabytes / results['copy']:.1f} MB/s; "
          f"per round {', '.join(f'{r:.2f}x' for r in round_ratios)}; target >= 0.3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
