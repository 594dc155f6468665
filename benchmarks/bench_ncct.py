"""Benchmark: CT masking + resampling to 0.5 mm isotropic, 512×512 crop (issues 5, 15.3).

Ours (``dicomprep.convert.ncct.process_stack``: body mask with enclosed
cavities filled, connectivity on 2×2-pixel blocks, applied in place; separable
linear resampling of the body's box straight onto the 512×512 crop, written
as int16 HU plane by plane) against the seed's approach
(``scipy.ndimage.zoom(order=1)`` of the whole volume to 0.5 mm, then the
crop/pad), on the same synthetic 512×512×300 CT (0.7 mm pixels, 1 mm slices),
in one run. Each side runs in its own subprocess so that its peak resident
memory (``ru_maxrss``, which includes the float32 input volume) is its own.
Prints the time ratio (target ≤ 0.15) and peak memory against the output
volume in float32 (target ≤ 2×) and against the bytes actually returned.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_ncct.py [--slices 300] [--repeat 2] [--irregular]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PIXEL_MM, SLICE_MM, TARGET_MM, MATRIX = 0.7, 1.0, 0.5, (512, 512)


def synthetic_ct(n_slices: int, size: int = 512) -> np.ndarray:
    """``[slice, row, column]`` HU: an elliptic body (soft tissue, a bone ring,
    lungs) on a couch, air around it."""
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float32)
    r0, c0 = size * 0.52, size * 0.5
    body = ((rr - r0) / (size * 0.33)) ** 2 + ((cc - c0) / (size * 0.42)) ** 2 <= 1
    ring = body & (((rr - r0) / (size * 0.30)) ** 2 + ((cc - c0) / (size * 0.39)) ** 2 > 1)
    lungs = (((rr - r0) / (size * 0.18)) ** 2 + ((np.abs(cc - c0) - size * 0.17) / (size * 0.12)) ** 2) <= 1
    couch = (rr > size * 0.88) & (rr < size * 0.9)
    plane = np.full((size, size), -1000, np.float32)
    plane[body] = 40
    plane[ring] = 700
    plane[lungs] = -850
    plane[couch] = 200
    vol = np.empty((n_slices, size, size), np.float32)
    rng = np.random.default_rng(0)
    for k in range(n_slices):
        vol[k] = plane + rng.normal(0, 5, (size, size)).astype(np.float32)
    return vol


def frames_for(n_slices: int, size: int = 512, irregular: bool = False):
    """Slice geometry: 1 mm apart, or (``irregular``) jittered by up to ±0.2 mm so the
    per-slice path for tilted/irregular stacks runs instead of the single pass."""
    from dicomprep import geometry
    jitter = 0.2 * np.sin(np.arange(n_slices) * 1.7) if irregular else np.zeros(n_slices)
    return [geometry.FrameGeometry(np.array([-size * PIXEL_MM / 2, -size * PIXEL_MM / 2, k * SLICE_MM + jitter[k]]),
                                   np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), PIXEL_MM, PIXEL_MM, size, size)
            for k in range(n_slices)]


def run_ours(n_slices: int, irregular: bool = False) -> dict:
    import SimpleITK as sitk
    from dicomprep import geometry
    from dicomprep.convert import ncct
    from dicomprep.workflow_support import STAGE_RESOURCES
    # the threads the workflow's convert_ncct rule reserves per unit (units run side by side)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(STAGE_RESOURCES["ncct"]["threads"])
    hu = synthetic_ct(n_slices)
    frames = frames_for(n_slices, irregular=irregular)
    stack = ncct.CtStack(hu, frames, geometry.stack_report(np.array([f.position for f in frames]), frames[0].normal))
    del hu  # the pipeline consumes the stack (as convert_ct_series does)
    t0 = time.perf_counter()
    out, grid, _ = ncct.process_stack(stack, {**ncct.DEFAULTS, "spacing_mm": TARGET_MM, "matrix": list(MATRIX)})
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "shape": list(out.shape), "checksum": float(out[::7, ::7, ::7].mean()),
            "out_bytes": int(out.nbytes)}


def run_seed(n_slices: int) -> dict:
    from scipy import ndimage
    hu = synthetic_ct(n_slices)
    t0 = time.perf_counter()
    zoom = (SLICE_MM / TARGET_MM, PIXEL_MM / TARGET_MM, PIXEL_MM / TARGET_MM)
    big = ndimage.zoom(hu, zoom, order=1, cval=-1000.0)
    # seed: crop/pad in plane around the centre to the matrix
    nz, ny, nx = big.shape
    out = np.full((nz, MATRIX[1], MATRIX[0]), -1000, np.float32)
    y0, x0 = (ny - MATRIX[1]) // 2, (nx - MATRIX[0]) // 2
    out[:, :, :] = big[:, max(y0, 0):max(y0, 0) + MATRIX[1], max(x0, 0):max(x0, 0) + MATRIX[0]]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "shape": list(out.shape)}


def child(which: str, n_slices: int) -> None:
    res = run_seed(n_slices) if which == "seed" else run_ours(n_slices, irregular=which == "ours-irregular")
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def spawn(which: str, n_slices: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--slices", str(n_slices)],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs per side; the best of each is compared")
    ap.add_argument("--child", choices=["ours", "ours-irregular", "seed"])
    ap.add_argument("--irregular", action="store_true",
                    help="also time the per-slice path used for tilted / irregularly spaced stacks")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.slices)
        return
    # Alternate the two sides and keep each one's best run: other jobs on a shared
    # machine inflate single timings, and alternating exposes both to the same load.
    ours_runs, seed_runs = [], []
    for _ in range(args.repeat):
        ours_runs.append(spawn("ours", args.slices))
        seed_runs.append(spawn("seed", args.slices))
    ours = min(ours_runs, key=lambda r: r["seconds"])
    seed = min(seed_runs, key=lambda r: r["seconds"])
    print("runs (s): ours " + ", ".join(f"{r['seconds']:.2f}" for r in ours_runs)
          + "; seed " + ", ".join(f"{r['seconds']:.2f}" for r in seed_runs))
    out_mb = np.prod(ours["shape"]) * 4 / 2**20
    print(f"input 512x512x{args.slices} @ {PIXEL_MM}x{PIXEL_MM}x{SLICE_MM} mm -> output {ours['shape'][::-1]} @ {TARGET_MM} mm")
    print(f"ours (filled body mask + separable resample of the body box, int16): {ours['seconds']:.2f} s, "
          f"peak RSS {ours['maxrss_mb']:.0f} MB")
    print(f"seed (scipy.ndimage.zoom order=1 + crop): {seed['seconds']:.2f} s, peak RSS {seed['maxrss_mb']:.0f} MB")
    print(f"time ratio ours/seed: {ours['seconds'] / seed['seconds']:.3f} (target <= 0.15)")
    print(f"peak memory ours: {ours['maxrss_mb']:.0f} MB = {ours['maxrss_mb'] / out_mb:.2f}x the output volume in "
          f"float32 ({out_mb:.0f} MB; target <= 2x), {ours['maxrss_mb'] * 2**20 / ours['out_bytes']:.2f}x the "
          f"{ours['out_bytes'] / 2**20:.0f} MB actually returned (int16); the float32 input alone is "
          f"{args.slices * 512 * 512 * 4 / 2**20:.0f} MB")
    if args.irregular:
        irr = spawn("ours-irregular", args.slices)
        print(f"ours, irregular spacing (per-slice path): {irr['seconds']:.2f} s "
              f"(ratio {irr['seconds'] / seed['seconds']:.3f}), peak RSS {irr['maxrss_mb']:.0f} MB "
              f"= {irr['maxrss_mb'] / out_mb:.2f}x")


if __name__ == "__main__":
    main()
