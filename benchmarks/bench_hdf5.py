"""Benchmark the HDF5 store against its baselines and print the ratios.

1. Read: one 512x512x300 int16 volume read back from the store
   (``read_hdf5_series``) versus ``numpy.load`` of the same array from an
   ``.npy`` file on the same disk (target: within 2x).
2. Write: a unit of 300 DICOM slices written by ``write_unit_hdf5`` versus
   the plain-h5py baseline doing the same job without compression (read the
   DICOM files with pydicom, order by InstanceNumber, one ``create_dataset``)
   (target: within 1.5x); and the array-only write cost of each codec versus
   plain uncompressed h5py, for the record.
3. The compressed size ratio of each codec.

The volume is built from real CT slices (dcm_qa_ct GE head, cycled to 300
slices) so the codecs see realistic data. Reads are timed twice: warm (the
file was read just before, so ``numpy.load`` is a memory copy) and cold (the
file's pages evicted with ``posix_fadvise(DONTNEED)`` before each read, no
root needed), which is what "on the same disk" measures.

Run: ``.venv/bin/python benchmarks/bench_hdf5.py [--dir DIR] [--repeat N]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dicomprep.dicomio import read_dataset  # noqa: E402
from dicomprep.export import hdf5 as store  # noqa: E402

SHAPE = (300, 512, 512)


def median_time(fn, repeat: int) -> float:
    return median_times(fn, repeat)[0]


def median_times(fn, repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds (CPU time is less sensitive to other load)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def ct_template() -> Path:
    data = Path(os.environ.get("DICOMPREP_TESTDATA", ROOT.parent / "shared" / "data"))
    files = sorted((data / "dcm_qa_ct" / "In" / "GE").glob("*.dcm"))
    if not files:
        sys.exit(f"benchmark needs the shared test data (dcm_qa_ct) at {data}")
    return files


def build_series(folder: Path) -> tuple[list[Path], np.ndarray]:
    """300 single-frame CT files (real slices cycled), positions 1 mm apart."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sources = ct_template()
    slices = np.stack([read_dataset(p).pixel_array.astype(np.int16) for p in sources])
    volume = np.resize(slices, SHAPE).astype(np.int16)
    template = read_dataset(sources[0])
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    template.PixelRepresentation = 1
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 16, 15
    paths = []
    for k in range(SHAPE[0]):
        template.InstanceNumber = k + 1
        template.ImagePositionPatient = [-250.0, -250.0, float(k)]
        template.SOPInstanceUID = generate_uid()
        template.PixelData = volume[k].tobytes()
        p = folder / f"{k:04d}.dcm"
        template.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths, volume


def plain_unit(paths: list[Path], out: Path) -> None:
    """Baseline: pydicom read, InstanceNumber order, plain h5py, no compression."""
    import pydicom

    dss = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: int(d.InstanceNumber))
    arr = np.stack([d.pixel_array for d in dss])
    with h5py.File(out, "w") as h5:
        h5.create_dataset("s001/data", data=arr)


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (POSIX_FADV_DONTNEED), so the next read hits the disk."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="scratch folder on the disk to test (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--codecs", default="blosc-lz4,lzf,gzip,none")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_hdf5_", dir=args.dir))
    try:
        dicom_dir = work / "dicom"
        dicom_dir.mkdir()
        paths, volume = build_series(dicom_dir)
        print(f"volume {volume.shape} {volume.dtype}, {volume.nbytes / 1e6:.0f} MB, scratch {work}")
        npy = work / "v.npy"
        np.save(npy, volume)
        np.load(npy)
        t_npy, c_npy = median_times(lambda: np.load(npy), args.repeat)
        t_npy_cold = median_time(lambda: (evict(npy), np.load(npy)), args.repeat)

        def plain_write():
            with h5py.File(work / "plain.h5", "w") as h5:
                h5.create_dataset("d", data=volume)
        t_plain_arr = median_time(plain_write, args.repeat)
        plain_unit(paths, work / "plain_unit.h5")
        t_plain_unit, c_plain_unit = median_times(lambda: plain_unit(paths, work / "plain_unit.h5"),
                                                  max(2, args.repeat // 2))
        print(f"baselines: numpy.load {t_npy:.3f} s warm, {t_npy_cold:.3f} s cold | plain h5py array write {t_plain_arr:.3f} s | "
              f"plain unit (pydicom + h5py) {t_plain_unit:.3f} s")
        print(f"{'codec':9} {'cold/npy':>8} {'read s':>7} {'read/npy':>8} {'cpu/npy':>8} {'unit s':>7} {'unit/plain':>10} "
              f"{'cpu/plain':>9} "
              f"{'arr-write/plain':>15} {'size ratio':>10}")
        for codec in args.codecs.split(","):
            h5_path = work / f"unit_{codec}.h5"
            series = [("s001", paths, {"kind": "ct_axial"})]

            def write_unit():
                store.write_unit_hdf5(h5_path, series, compression=codec, values="raw")
            write_unit()
            t_unit, c_unit = median_times(write_unit, max(2, args.repeat // 2))

            def write_array():
                with h5py.File(work / "arr.h5", "w") as h5:
                    h5.create_dataset("d", data=volume, chunks=store.frame_chunks(volume.shape),
                                      **store.compression_options(codec))
            t_arr = median_time(write_array, args.repeat)
            back, _, _ = store.read_hdf5_series(h5_path, "s001")
            assert np.array_equal(back, volume), "store round trip changed the voxels"
            t_read, c_read = median_times(lambda: store.read_hdf5_series(h5_path, "s001"), args.repeat)
            t_cold = median_time(lambda: (evict(h5_path), store.read_hdf5_series(h5_path, "s001")), args.repeat)
            ratio = os.path.getsize(h5_path) / os.path.getsize(npy)
            print(f"{codec:9} {t_cold / t_npy_cold:8.2f} {t_read:7.3f} {t_read / t_npy:8.2f} {c_read / c_npy:8.2f} {t_unit:7.3f} "
                  f"{t_unit / t_plain_unit:10.2f} {c_unit / c_plain_unit:9.2f} "
                  f"{t_arr / t_plain_arr:15.2f} {ratio:10.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
