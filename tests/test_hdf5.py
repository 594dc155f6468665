"""HDF5 store: volumes equal the dcm2niix conversion, rows for bad series,
atomic writes, the cohort file and its index table, the rule wrapper."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from dicomprep import stages
from dicomprep.paths import layout
import pytest

from dicomprep.dicomio import read_dataset
from dicomprep.export import hdf5 as store
from test_arrays import assert_matches_reference

GE_DWI = ("dcm_qa_ge", "In/01_Ax_DWI_TENSOR_R2", "Ref/Ax_DWI_TENSOR_R2_1.nii")
GE_FMRI = ("dcm_qa_nih", "In/20180918GE/mr_0004", "Ref/DCM2NIIX_regression_test_4.nii")


def series_files(testdata: Path, folder: str, sub: str) -> list[Path]:
    return sorted(p for p in (testdata / folder / sub).iterdir() if p.name != "README-Series.txt")


@pytest.fixture(scope="module")
def unit_file(testdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("h5") / "unit.h5"
    truncated = tmp_path_factory.mktemp("bad") / "broken.dcm"
    src = testdata / "dcm_qa_ts" / "In" / "1.dcm"
    truncated.write_bytes(src.read_bytes()[:-5000])
    series = [
        ("s001", series_files(testdata, *GE_DWI[:2]), {"series_key": "k1", "kind": "dwi"}),
        ("s004", series_files(testdata, *GE_FMRI[:2]), {"series_key": "k4", "kind": "mr"}),
        ("s009", [truncated], {"series_key": "k9", "kind": "mr"}),
        ("s010", [testdata / "dcmqi" / "segmentations" / "liver.dcm"], {"series_key": "k10", "kind": "seg"}),
    ]
    rows = store.write_unit_hdf5(out, series, mode="3d", compression="lzf", values="rescaled", unit="g/s/P1/S1")
    return out, {r["series_id"]: r for r in rows}


@pytest.mark.parametrize("sid, ref", [("s001", GE_DWI), ("s004", GE_FMRI)])
def test_hdf5_volume_equals_dcm2niix_nifti(testdata, unit_file, sid, ref):
    path, rows = unit_file
    assert rows[sid]["status"] == "converted"
    with h5py.File(path, "r") as h5:
        data = h5[sid]["data"][()]
        affine = h5[sid].attrs["affine_ras"]
        labels = json.loads(h5[sid].attrs["dim_labels"])
    assert labels == ["volume", "slice_position", "row", "column"]
    assert_matches_reference(data.T, affine, testdata / ref[0] / ref[2])


def test_dwi_group_carries_bvalues_in_dcm2niix_order(testdata, unit_file):
    path, _ = unit_file
    with h5py.File(path, "r") as h5:
        dims = json.loads(h5["s001"].attrs["dims"])
        spacing = h5["s001"].attrs["spacing"]
    ref_bval = np.loadtxt(testdata / "dcm_qa_ge" / "Ref" / "Ax_DWI_TENSOR_R2_1.bval")
    np.testing.assert_allclose(dims[0]["extra"]["DiffusionBValue"], ref_bval)
    ref = nib.load(testdata / "dcm_qa_ge" / "Ref" / "Ax_DWI_TENSOR_R2_1.nii")
    np.testing.assert_allclose(spacing, ref.header.get_zooms()[:3], atol=1e-3)


def test_bad_series_get_reason_rows_and_the_rest_continues(unit_file):
    path, rows = unit_file
    assert rows["s009"]["status"] == "failed" and "broken.dcm" in rows["s009"]["reason"]
    assert rows["s010"]["status"] == "skipped" and "seg" in rows["s010"]["reason"]
    with h5py.File(path, "r") as h5:
        assert sorted(h5.keys()) == ["s001", "s004"]
        assert h5["s004"]["data"].chunks == (1, 1, 64, 64)      # one chunk per slice


def test_metadata_attributes_hold_nothing_identifying(testdata, unit_file):
    path, _ = unit_file
    ds = read_dataset(series_files(testdata, *GE_FMRI[:2])[0], stop_before_pixels=True)
    secrets = [str(ds.get(k)) for k in ("PatientName", "PatientID", "InstitutionName", "StationName",
                                        "DeviceSerialNumber", "StudyDate", "SeriesInstanceUID",
                                        "StudyInstanceUID", "SOPInstanceUID") if ds.get(k)]
    assert secrets
    with h5py.File(path, "r") as h5:
        text = " ".join(str(v) for g in h5.values() for v in g.attrs.values())
        assert h5["s004"].attrs["Modality"] == "MR"
    for value in secrets:
        assert value not in text


def test_2d_mode_keeps_frames_in_acquisition_order(testdata, tmp_path):
    files = series_files(testdata, *GE_DWI[:2])
    out = tmp_path / "u.h5"
    rows = store.write_unit_hdf5(out, [("s001", files, {})], mode="2d", compression="gzip")
    assert rows[0]["status"] == "converted" and rows[0]["mode"] == "2d"
    numbers = sorted(int(read_dataset(f, stop_before_pixels=True).InstanceNumber) for f in files)
    with h5py.File(out, "r") as h5:
        assert h5["s001"]["data"].shape == (14, 256, 256)
        assert json.loads(h5["s001"].attrs["dims"])[0]["values"] == numbers
        first = h5["s001"]["data"][0]
    lowest = next(f for f in files if int(read_dataset(f, stop_before_pixels=True).InstanceNumber) == numbers[0])
    np.testing.assert_array_equal(first, read_dataset(lowest).pixel_array)


def test_interrupted_write_leaves_no_file(testdata, tmp_path, monkeypatch):
    out = tmp_path / "u.h5"

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(store, "write_series_group", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write_unit_hdf5(out, [("s001", series_files(testdata, *GE_DWI[:2]), {})])
    assert list(tmp_path.iterdir()) == []


def test_cohort_links_and_index_row_to_array_in_one_line(testdata, tmp_path):
    share = tmp_path / "share"
    units = ["grp/seq/P1/S1", "grp/seq/P2/S1"]
    for u in units:
        store.write_unit_hdf5(share / "hdf5" / f"{u}.h5", [("s001", series_files(testdata, *GE_DWI[:2]), {})])
    cohort = share / "hdf5" / "cohort.h5"
    store.write_cohort_files(cohort, share / "tables" / "hdf5_index.csv",
                             [share / "hdf5" / f"{u}.h5" for u in units], share)
    index = pd.read_csv(share / "tables" / "hdf5_index.csv")
    assert list(index["unit"]) == units and set(index["shape"]) == {"7x2x256x256"}
    row = index.iloc[1]
    arr = h5py.File(share / row.h5_file)[row.h5_path][()]                 # the documented one-liner
    with h5py.File(share / "hdf5" / f"{units[1]}.h5") as h5:
        np.testing.assert_array_equal(arr, h5["s001/data"][()])
    # External links are relative: they resolve from another working directory
    # and after the whole share/ folder moves.
    moved = tmp_path / "moved"
    share.rename(moved)
    code = ("import h5py,sys; f=h5py.File(sys.argv[1]); "
            "print(f[sys.argv[2]].shape)")
    res = subprocess.run([sys.executable, "-c", code, str(moved / "hdf5" / "cohort.h5"), row.cohort_path],
                         cwd="/", capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "(7, 2, 256, 256)"


def test_export_hdf5_stage_reads_unit_sources(testdata, tmp_path):
    unit = "exam/exam/P1/S1"
    udir = tmp_path / "private" / "units" / unit
    udir.mkdir(parents=True)
    dwi = series_files(testdata, *GE_DWI[:2])
    inst = pd.DataFrame({"path": [str(p) for p in dwi] + [str(testdata / "dcmqi" / "segmentations" / "liver.dcm")],
                         "series_key": ["k1"] * len(dwi) + ["k2"],
                         "series_id": ["s001"] * len(dwi) + ["s002"]})
    inst.to_parquet(udir / "instances.parquet")
    pd.DataFrame({"series_key": ["k1", "k2"], "series_id": ["s001", "s002"],
                  "kind": ["dwi", "seg"]}).to_parquet(udir / "series.parquet")
    config = {"anonymisation": False, "export": {"hdf5": {"mode": "3d", "compression": "lzf", "values": "raw"}}}
    stage = layout(tmp_path).stage_dir("hdf5", unit)
    stages.export_hdf5(source="", stage=str(stage), done=str(stage) + '.done', unit=unit, settings="",
                       log=str(tmp_path / "log.txt"), config=config, threads=1)
    h5_out = layout(tmp_path).stage_share("hdf5", unit).hdf5(unit)
    table = pd.read_parquet(stage / "manifest.parquet")
    assert dict(zip(table["series_id"], table["status"])) == {"s001": "converted", "s002": "skipped"}
    assert table.set_index("series_id").loc["s001", "h5_path"] == "/s001/data"
    with h5py.File(h5_out) as h5:
        assert h5["s001/data"].shape == (7, 2, 256, 256)


def test_store_round_trip_as_array_source(testdata, unit_file):
    path, _ = unit_file
    arr, dims, attrs = store.read_hdf5_series(path, "s001")
    assert [d.label for d in dims] == ["volume", "slice_position"]
    assert arr.shape == (7, 2, 256, 256) and attrs["mode"] == "3d"


def test_export_hdf5_stage_reads_deidentified_sources(testdata, tmp_path):
    """With anonymisation on, the rule reads the manifest's output_path files and
    reports series whose instances were all dropped."""
    unit = "exam/exam/P2/S2"
    udir = tmp_path / "private" / "units" / unit
    udir.mkdir(parents=True)
    dwi = series_files(testdata, *GE_DWI[:2])
    deid_stage = layout(tmp_path).stage_dir("deid", unit)
    copies = deid_stage / "share" / "dicom" / unit / "s001"
    copies.mkdir(parents=True)
    for i, p in enumerate(dwi, 1):                      # stand-ins for de-identified copies
        (copies / f"{i:04d}.dcm").write_bytes(p.read_bytes())
    dropped = series_files(testdata, *GE_FMRI[:2])[:2]
    inst = pd.DataFrame({"path": [str(p) for p in dwi + dropped],
                         "series_key": ["k1"] * len(dwi) + ["k2"] * 2,
                         "series_id": ["s001"] * len(dwi) + ["s002"] * 2})
    inst.to_parquet(udir / "instances.parquet")
    pd.DataFrame({"series_key": ["k1", "k2"], "series_id": ["s001", "s002"],
                  "kind": ["dwi", "mr"]}).to_parquet(udir / "series.parquet")
    manifest = pd.DataFrame({"path": inst["path"], "series_key": inst["series_key"], "series_id": inst["series_id"],
                             "output_path": [f"share/dicom/{unit}/s001/{i:04d}.dcm" for i in range(1, len(dwi) + 1)] + ["", ""],
                             "status": ["written"] * len(dwi) + ["dropped"] * 2, "reason": ""})
    manifest.to_parquet(deid_stage / "manifest.parquet")
    stage = layout(tmp_path).stage_dir("hdf5", unit)
    stages.export_hdf5(source=str(deid_stage) + ".done", stage=str(stage), done=str(stage) + ".done", unit=unit,
                       settings="", log=None, config={"anonymisation": True}, threads=1)
    table = pd.read_parquet(stage / "manifest.parquet").set_index("series_id")
    h5_out = layout(tmp_path).stage_share("hdf5", unit).hdf5(unit)
    assert table.loc["s001", "status"] == "converted" and table.loc["s001", "h5_file"] == f"hdf5/{unit}.h5"
    assert table.loc["s002", "status"] == "skipped" and "de-identification" in table.loc["s002", "reason"]
    with h5py.File(h5_out) as h5:
        assert list(h5.keys()) == ["s001"]


def test_unit_file_is_byte_identical_whatever_the_blosc_thread_count(testdata, tmp_path, monkeypatch):
    """Issue 12.5: the same CT unit written twice (Blosc asked for 1, then 4 threads)
    gives the same bytes. Multi-threaded c-blosc places blocks in completion order,
    so without the writer's single-thread setting two runs differ."""
    files = sorted((testdata / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2010").glob("I*"))
    assert len(files) == 28
    digests = []
    for threads in ("1", "4", "4"):
        monkeypatch.setenv("BLOSC_NTHREADS", threads)
        out = tmp_path / f"unit_{len(digests)}.h5"
        rows = store.write_unit_hdf5(out, [("s001", files, {"series_key": "k", "kind": "ct_axial"})],
                                     compression="blosc-lz4", unit="g/s/P1/S1")
        assert rows[0]["status"] == "converted"
        assert os.environ["BLOSC_NTHREADS"] == threads          # restored after the write
        digests.append(out.read_bytes())
    assert digests[0] == digests[1] == digests[2]
