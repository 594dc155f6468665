"""Benchmark: writing results back as DICOM, against named baselines, in one run.

1. SEG: :func:`dicomprep.export.dicom_seg.write_seg_from_manifest` (NIfTI masks ->
   DICOM-SEG: source grid, resampling check, keyed UIDs, determinism fixes,
   atomic write) vs the baseline *bare highdicom*: ``hd.seg.Segmentation`` built
   from the same in-memory pixel array and source datasets, then ``save_as``.
   Case: dcmqi partial_overlaps (5 segments on 3 CT slices of 512x512).
2. CT series: :func:`dicomprep.export.dicom_series.ct_nifti_to_series` vs the
   baseline *dcm2niix reading it back* (the converter run on the written series),
   a named reference for "how long does a reader take on this many files".
   Case: the GE tilted head CT resampled to 1 mm, 256x256.

    .venv/bin/python benchmarks/bench_dicomwrite.py [--repeat N]

Prints each time (best of N) and the ratio dicomprep / baseline.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from dicomprep.convert import ncct  # noqa: E402
from dicomprep.convert.dcm2niix import dcm2niix_binary  # noqa: E402
from dicomprep.convert.seg import decode_segmentation, source_grid  # noqa: E402
from dicomprep.convert.seg_output import write_masks  # noqa: E402
from dicomprep.export.dicom_seg import write_seg_from_manifest  # noqa: E402
from dicomprep.export.dicom_series import ct_nifti_to_series  # noqa: E402

DATA = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
SECRET = b"benchmark-secret-0123456789abcdef"


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bare_highdicom(src, masks, out):
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    grid = source_grid(src)
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in grid.paths]
    for ds in dss:
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet).strip():
            del ds.SpecificCharacterSet
    arr = np.stack([m.data.transpose(2, 1, 0) for m in masks], axis=-1).astype(np.uint8)
    algo = hd.AlgorithmIdentificationSequence(name="x", family=codes.cid7162.ArtificialIntelligence, version="1")
    descs = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=m.segment.label,
                                       segmented_property_category=codes.SCT.Tissue,
                                       segmented_property_type=codes.SCT.Tissue, algorithm_type="AUTOMATIC",
                                       algorithm_identification=algo) for i, m in enumerate(masks)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(dss, arr, "BINARY", descs, hd.UID(), 1, hd.UID(), 1, "x", "x", "1", "0")
    seg.save_as(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_dicomwrite_"))
    src = sorted(glob.glob(str(DATA / "dcmqi/segmentations/ct-3slice/*.dcm")))
    masks = decode_segmentation(DATA / "dcmqi/segmentations/partial_overlaps.dcm", src)
    write_masks(masks, tmp / "m", series_id="S", assessor_id="A")
    ours = best(lambda: write_seg_from_manifest(tmp / "m" / "S_seg_A.json", src, tmp / "ours.dcm",
                                                secret=SECRET, name="b"), args.repeat)
    base = best(lambda: bare_highdicom(src, masks, tmp / "base.dcm"), args.repeat)
    print(f"SEG   dicomprep write_seg {ours:.3f} s | bare highdicom {base:.3f} s | ratio {ours / base:.2f}")

    ge = [Path(p) for p in sorted(glob.glob(str(DATA / "dcm_qa_ct/In/GE/*.dcm")))]
    nii = tmp / "ge.nii.gz"
    ncct.convert_ct_series(ge, nii, {"spacing_mm": 1.0, "matrix": [256, 256]})
    n = [0]

    def write():
        n[0] += 1
        ct_nifti_to_series(nii, ge[0], tmp / f"ct{n[0]}", secret=SECRET)

    def read():
        out = tmp / f"n{n[0]}"
        out.mkdir(exist_ok=True)
        subprocess.run([dcm2niix_binary(), "-z", "n", "-o", str(out), str(tmp / f"ct{n[0]}")],
                       capture_output=True, check=True)
    ours = best(write, args.repeat)
    base = best(read, args.repeat)
    print(f"CT    dicomprep ct_nifti_to_series {ours:.3f} s | dcm2niix reading it {base:.3f} s | "
          f"ratio {ours / base:.2f} ({len(list((tmp / 'ct1').iterdir()))} slices)")


if __name__ == "__main__":
    main()
