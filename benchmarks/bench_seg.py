"""Benchmark: DICOM-SEG -> per-segment NIfTI, dicomprep vs dcmqi's segimage2itkimage.

Decodes and writes every segment of the shared SEGs (dcmqi, highdicom,
pydicom-data liver in four encodings) with :mod:`dicomprep.convert.seg`, then
runs ``segimage2itkimage --outputType nifti`` on the same files, in one run, and
prints both wall times and the ratio (target: dicomprep no slower).

    .venv/bin/python benchmarks/bench_seg.py [--repeat N]

dicomprep's time includes reading the source series' headers and building the
grid (segimage2itkimage does not read the source images at all).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.convert.seg import decode_segmentation  # noqa: E402
from dicomprep.convert.seg_output import write_masks  # noqa: E402

DATA = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
SEGIMAGE2ITK = ROOT / ".venv" / "bin" / "segimage2itkimage"


def cases() -> list[tuple[Path, list[Path]]]:
    d = DATA / "dcmqi" / "segmentations"
    ct3 = sorted((d / "ct-3slice").iterdir())
    img24 = sorted((d / "24x38x3" / "image").iterdir())
    ct2 = sorted((DATA / "pydicom/dicomdirtests/77654033/CT2").iterdir())
    h = DATA / "highdicom" / "test_files"
    out = [(d / "liver.dcm", ct3), (d / "partial_overlaps.dcm", ct3),
           (d / "23x38x3/seg/label.seg", sorted((d / "23x38x3" / "image").iterdir())),
           (d / "24x38x3/seg/label.seg", img24), (d / "sparse-labelmap-noppv.dcm", img24),
           (d / "sparse-labelmap-ppv5.dcm", img24),
           (h / "seg_image_ct_binary.dcm", ct2), (h / "seg_image_ct_binary_fractional.dcm", ct2),
           (h / "seg_image_ct_true_fractional.dcm", ct2), (h / "seg_image_ct_binary_overlap.dcm", ct2),
           (h / "seg_image_ct_binary_single_frame.dcm", [h / "ct_image.dcm"])]
    out += [(DATA / "pydicom-data" / f"liver_{x}.dcm", ct3) for x in ("expb", "deflate", "rle", "j2k")]
    return out


def run_ours(items, out_dir: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for i, (seg, src) in enumerate(items):
        masks = decode_segmentation(seg, src)
        write_masks(masks, out_dir / f"c{i}", series_id="s001", assessor_id=f"A{i}")
        n += len(masks)
    return time.perf_counter() - t0, n


def run_dcmqi(items, out_dir: Path) -> tuple[float, int, list]:
    t0 = time.perf_counter()
    n, failed = 0, []
    for i, (seg, _src) in enumerate(items):
        d = out_dir / f"c{i}"
        d.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([str(SEGIMAGE2ITK), "--inputDICOM", str(seg), "--outputDirectory", str(d),
                            "--outputType", "nifti"], capture_output=True)
        if r.returncode != 0:
            failed.append(seg.name)
        n += len(list(d.glob("*.nii*")))
    return time.perf_counter() - t0, n, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    items = cases()
    if not DATA.is_dir():
        sys.exit(f"test data not found at {DATA} (set DICOMPREP_TESTDATA)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours, theirs = [], []
        for r in range(args.repeat):
            t, n_ours = run_ours(items, tmp / f"ours{r}")
            ours.append(t)
            if SEGIMAGE2ITK.exists():
                t2, n_theirs, failed = run_dcmqi(items, tmp / f"dcmqi{r}")
                theirs.append(t2)
    print(f"SEG files: {len(items)}")
    print(f"dicomprep decode_segmentation+write_masks: {min(ours):.3f} s, {n_ours} masks written")
    if theirs:
        print(f"dcmqi segimage2itkimage (nifti):          {min(theirs):.3f} s, {n_theirs} files, "
              f"{len(failed)} SEG(s) it could not convert: {', '.join(failed)}")
        print(f"ratio dicomprep / segimage2itkimage: {min(ours) / min(theirs):.2f} (<= 1 means no slower)")
        if failed:
            both = [it for it in items if it[0].name not in failed]
            with tempfile.TemporaryDirectory() as tmp2:
                t_o, _ = run_ours(both, Path(tmp2) / "o")
                t_d, _, _ = run_dcmqi(both, Path(tmp2) / "d")
            print(f"on the {len(both)} SEGs both convert: dicomprep {t_o:.3f} s, segimage2itkimage {t_d:.3f} s, "
                  f"ratio {t_o / t_d:.2f}")
    else:
        print("segimage2itkimage not installed: no baseline")


if __name__ == "__main__":
    main()
