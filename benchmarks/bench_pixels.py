"""Benchmark: the burned-in text screen of a real CT series against its conversion (issue 13).

What the de-identification adds per instance (``dicomprep.deid.pixels.screen_instance``
on the de-identified bytes: decode, the text-likeness test, OCR only where it flags
a region) is timed on a real CT series from the shared test data, against the
conversions of the same series measured in the same run: ``dcm2niix`` on its files
and ``dicomprep.convert.ncct.convert_ct_series`` (0.5 mm resampling). Target: the
screen costs at most 10% of the conversion. The rounds are interleaved and the best
round of each is compared (the machine is shared); all three scale with the slice
count, so the ratio holds for a 300-slice CT. A clean series runs no OCR.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_pixels.py [--series GE|Philips] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def series_files(data: Path, which: str) -> list[Path]:
    folder = data / "dcm_qa_ct" / "In" / ("GE" if which == "GE" else "Philips/S21570/S2010")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in ("DIRFILE",) and p.suffix != ".txt")


def main() -> None:
    import os

    from dicomprep import dicomio
    from dicomprep.convert import ncct
    from dicomprep.convert.dcm2niix import dcm2niix_binary
    from dicomprep.deid import pixels
    from dicomprep.deid.instance import deidentify_bytes
    from dicomprep.deid.dataset import make_deidentifier

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("DICOMPREP_TESTDATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--series", default="Philips", choices=["GE", "Philips"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ncct-repeat", type=int, default=2)
    args = ap.parse_args()
    files = series_files(Path(args.data), args.series)
    deid = make_deidentifier({"deid": {"burned_in_text": "off"}}, b"bench-secret-0123456789abcdef")
    blobs = [deidentify_bytes(deid, dicomio.read_bytes(p))[0] for p in files]  # what the hook screens
    settings = pixels.PixelSettings(mode="redact")
    pixels.screen_instance(blobs[0], settings)  # imports, first-call set-up
    screen, d2n, resampled = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.repeat):  # interleaved, so a busy machine slows all three alike
            t0 = time.perf_counter()
            for b in blobs:
                pixels.screen_instance(b, settings)
            screen.append(time.perf_counter() - t0)
            out = tmp / f"d{r}"
            out.mkdir()
            t0 = time.perf_counter()
            subprocess.run([dcm2niix_binary(), "-z", "y", "-o", str(out), "-f", "ct", str(files[0].parent)],
                           check=True, capture_output=True)
            d2n.append(time.perf_counter() - t0)
            if r < args.ncct_repeat:
                t0 = time.perf_counter()
                ncct.convert_ct_series(files, tmp / f"ct{r}.nii.gz", {})
                resampled.append(time.perf_counter() - t0)

    c = settings.counts
    k = len(blobs)
    s, d, m = min(screen), min(d2n), min(resampled)
    print(f"series dcm_qa_ct/{args.series}: {k} slices, {args.repeat} rounds (best round of each shown; "
          f"median in brackets)")
    print(f"burned-in text screen: {s:.3f} s [{statistics.median(screen):.3f}] = {1000 * s / k:.1f} ms a slice; "
          f"{c['instances_screened']} screened, {c['instances_ocr']} OCRed, {c['instances_with_text']} with text")
    print(f"dcm2niix conversion:   {d:.3f} s [{statistics.median(d2n):.3f}]  -> screen/dcm2niix = {s / d:.3f}")
    print(f"ncct conversion:       {m:.3f} s [{statistics.median(resampled):.3f}]  -> screen/ncct     = {s / m:.3f}")
    print(f"screen / (dcm2niix + ncct) = {s / (d + m):.3f}; target <= 0.10 of the conversion; "
          f"for {300} slices the screen is about {300 * s / k:.1f} s")


if __name__ == "__main__":
    main()
