"""Benchmark: cost of one QC picture (``dicomprep.qc.pictures``).

Standalone: ``python benchmarks/bench_pictures.py`` (test data from
``DICOMPREP_TESTDATA``, default ``../shared/data``; ``BENCH_REPEATS``, default 3).

Inputs, written to a temporary folder:

* CT: a synthetic head-sized phantom on the ncct output grid (512×512×280,
  0.5 mm isotropic, int16 HU, LPS-stored affine), ``.nii.gz``, with the two
  CT windows and the body threshold (the unit QC's CT call), and again with
  a mask NIfTI (the SEG-outline call);
* DWI: dcm_qa_ge's reference NIfTI (256×256×2×7) with its b-values;
* fMRI: dcm_qa_nih's GE reference NIfTI (one 3-D picture of a 4-D file).

For each input it times, best of N:

* ``load``: reading the voxels alone (``np.asanyarray(nib.load(f).dataobj)``),
  the named baseline: a picture cannot cost less than reading its volume;
* ``now``: the current ``pictures`` function (reads the file);
* ``array``: the ``*_array`` function on voxels already in memory (what the
  unit QC does: the intensity checks and the picture share one read);
* ``v0``: the implementation before this change (commit ``26c1468``,
  loaded from git when the checkout has that history).

and prints milliseconds per picture and the ratios ``now / load`` and ``v0 / now``.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.qc import pictures  # noqa: E402

BASELINE_COMMIT = "26c1468"


def load_v0():
    """The pictures module as of BASELINE_COMMIT, or None without git history."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:src/dicomprep/qc/pictures.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("dicomprep.qc._pictures_v0", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "dicomprep.qc"
    exec(compile(src, "pictures_v0.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def ct_phantom(folder: Path) -> tuple[Path, Path]:
    shape = (512, 512, 280)
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    r = ((x - 256) / 180.0) ** 2 + ((y - 250) / 220.0) ** 2 + ((z - 140) / 130.0) ** 2
    vol = np.full(shape, -1000, np.int16)
    vol[r <= 1.0] = 1200                              # skull
    vol[r <= 0.85] = 35                               # brain
    rng = np.random.default_rng(0)
    vol[r <= 0.85] += rng.integers(-8, 9, size=int((r <= 0.85).sum()), dtype=np.int16)
    affine = np.diag([-0.5, -0.5, 0.5, 1.0])
    affine[:3, 3] = [128.0, 128.0, -70.0]
    ct = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(ct))
    mask = np.zeros(shape, np.uint8)
    mask[((x - 300) / 40.0) ** 2 + ((y - 220) / 50.0) ** 2 + ((z - 150) / 30.0) ** 2 <= 1.0] = 1
    seg = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), str(seg))
    return ct, seg


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    data = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    v0 = load_v0()
    with tempfile.TemporaryDirectory(prefix="bench_pictures_") as tmp:
        tmp = Path(tmp)
        ct, seg = ct_phantom(tmp)
        ct_img = nib.load(str(ct))
        ct_data, seg_data = np.asanyarray(ct_img.dataobj), np.asanyarray(nib.load(str(seg)).dataobj)
        cases = [
            ("CT 512x512x280, 2 windows + body threshold", ct,
             lambda m, f, o: m.volume_picture(f, o, windows=list(pictures.CT_WINDOWS.values()), mask_threshold=-200.0),
             lambda o: pictures.volume_picture_array(ct_data, ct_img.affine, o, windows=list(pictures.CT_WINDOWS.values()),
                                                     mask_threshold=-200.0)),
            ("CT 512x512x280 + SEG mask outline", ct,
             lambda m, f, o: m.volume_picture(f, o, mask=seg),
             lambda o: pictures.volume_picture_array(ct_data, ct_img.affine, o, mask=seg_data)),
        ]
        dwi = data / "dcm_qa_ge" / "Ref" / "Ax_DWI_TENSOR_R2_1.nii"
        if dwi.is_file():
            bvals = np.loadtxt(dwi.with_suffix(".bval"), ndmin=1)
            dwi_img = nib.load(str(dwi))
            dwi_data = np.asarray(dwi_img.dataobj)
            cases.append(("DWI 256x256x2x7 (GE reference)", dwi,
                          lambda m, f, o: m.diffusion_picture(f, bvals, o),
                          lambda o: pictures.diffusion_picture_array(dwi_data, dwi_img.affine, bvals, o)))
        fmri = data / "dcm_qa_nih" / "Ref" / "DCM2NIIX_regression_test_4.nii"
        if fmri.is_file():
            fmri_img = nib.load(str(fmri))
            fmri_data = np.asarray(fmri_img.dataobj)
            cases.append(("fMRI 4-D, first volume (GE reference)", fmri,
                          lambda m, f, o: m.volume_picture(f, o),
                          lambda o: pictures.volume_picture_array(fmri_data, fmri_img.affine, o)))
        print(f"one QC picture, best of {repeats}; baseline 'load' = reading the voxels with nibabel")
        print(f"{'case':48s} {'load ms':>8s} {'now ms':>8s} {'array ms':>9s} {'v0 ms':>8s} {'now/load':>9s} "
              f"{'v0/now':>7s} {'PNG kB':>7s}")
        for name, path, call, array_call in cases:
            t_load = best(lambda: np.asanyarray(nib.load(str(path)).dataobj), repeats)
            out = tmp / "now.png"
            t_now = best(lambda: call(pictures, path, out), repeats)
            kb = out.stat().st_size / 1024
            t_arr = best(lambda: array_call(tmp / "array.png"), repeats)
            t_v0 = best(lambda: call(v0, path, tmp / "v0.png"), repeats) if v0 else float("nan")
            print(f"{name:48s} {t_load * 1e3:8.1f} {t_now * 1e3:8.1f} {t_arr * 1e3:9.1f} {t_v0 * 1e3:8.1f} "
                  f"{t_now / t_load:8.2f}x {t_v0 / t_now:6.1f}x {kb:7.1f}")
        if v0 is None:
            print(f"(v0 not measured: no git history with commit {BASELINE_COMMIT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
