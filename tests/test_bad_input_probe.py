"""Issue 12.4: bad instances from a probe on real files get their true reason, and an
output built from fewer instances than its series has says so (status ``partial``).

The probe is the dcm_qa_ct Philips head phantom series (28 axial slices), copied into
a tmp tree and altered: one slice cut to 200 bytes, one with an unknown transfer
syntax, one without Pixel Data, one without ImagePositionPatient /
ImageOrientationPatient, one copied twice (duplicate SOPInstanceUID).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from dicomprep.convert import dcm2niix as d2n
from dicomprep.convert import ncct
from dicomprep.export import hdf5 as store
from dicomprep.index import build_index
from dicomprep.tables import share_safe_text

SERIES = "dcm_qa_ct/In/Philips/S21570/S2010"


@pytest.fixture(scope="module")
def probe(testdata, tmp_path_factory):
    src = sorted(p for p in (testdata / SERIES).iterdir() if p.name != "DIRFILE")
    assert len(src) == 28
    root = tmp_path_factory.mktemp("probe") / "in"
    ser = root / "exam1" / "ct"
    ser.mkdir(parents=True)
    for p in src[5:]:
        shutil.copy(p, ser / p.name)
    ds = pydicom.dcmread(src[0])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    ds.save_as(ser / "ts_unknown.dcm")
    ds = pydicom.dcmread(src[1])
    del ds.PixelData
    ds.save_as(ser / "no_pixels.dcm")
    ds = pydicom.dcmread(src[2])
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(ser / "no_geometry.dcm")
    (ser / "cut.dcm").write_bytes(src[3].read_bytes()[:200])
    shutil.copy(src[4], ser / "a_copy.dcm")
    shutil.copy(src[4], ser / "b_copy.dcm")
    out = tmp_path_factory.mktemp("probe_out")
    build_index(root, out, layout="dicom")
    idx = out / "private" / "index"
    inst = pd.read_parquet(idx / "instances.parquet")
    (series,) = pd.read_parquet(idx / "series.parquet").to_dict("records")
    return dict(inst=inst, series=series, out=out, ser=ser)


def test_only_usable_instances_reach_the_converters(probe):
    names = {Path(p).name for p in probe["inst"]["path"]}
    assert {"ts_unknown.dcm", "no_pixels.dcm", "cut.dcm", "b_copy.dcm"}.isdisjoint(names)
    assert {"a_copy.dcm", "no_geometry.dcm"} <= names and len(names) == 25


def test_hdf5_missing_geometry_has_a_reason_and_partial_status(probe, tmp_path):
    """The slice without geometry cannot be placed: the series is stored as 2-D frames
    with that reason (before: `converted`, no affine, no reason); the three unusable
    files make the row `partial`, naming them."""
    s = probe["series"]
    paths = list(probe["inst"]["path"])
    rows = store.write_unit_hdf5(tmp_path / "u.h5", [(s["series_id"], paths, {
        "series_key": s["series_key"], "kind": s["kind"], "excluded_files": s["excluded_files"]})],
        compression="gzip")
    (row,) = rows
    assert row["status"] == "partial" and row["mode"] == "2d"
    assert "1 of 25 frames have no slice geometry" in row["reason"]
    for why in ("truncated file", "no pixel data (7FE0,0010)", "unreadable pixels: transfer syntax 1.2.3.4.5"):
        assert why in row["reason"]
    assert "built from 25 file(s); 3 file(s)" in row["reason"]
    assert share_safe_text(row["reason"]) == row["reason"]           # no paths, no input file names
    assert ".dcm" not in row["reason"]


def test_hdf5_good_slices_only_partial_volume_with_affine(probe, tmp_path):
    s = probe["series"]
    paths = [p for p in probe["inst"]["path"] if not p.endswith("no_geometry.dcm")]
    (row,) = store.write_unit_hdf5(tmp_path / "u.h5", [(s["series_id"], paths, {
        "series_key": s["series_key"], "kind": s["kind"], "excluded_files": s["excluded_files"]})],
        compression="gzip")
    assert row["status"] == "partial" and row["mode"] == "3d" and row["shape"] == "24x512x512"


def test_ncct_geometry_reason_is_a_filled_in_sentence(probe):
    inst = probe["inst"]
    ser = pd.DataFrame([probe["series"]])
    selected, reasons = ncct.select_ct_series(ser, inst, dict(ncct.DEFAULTS))
    assert selected.empty
    (reason,) = reasons["reason"]
    number = pydicom.dcmread(probe["ser"] / "no_geometry.dcm", stop_before_pixels=True).InstanceNumber
    assert reason.startswith("1 of 25 slices have no slice geometry") and f"InstanceNumber {number}" in reason
    assert share_safe_text(reason) == reason          # no slash-joined names turned into <path>


def test_ncct_partial_when_the_series_lost_files(probe, tmp_path):
    paths = [Path(p) for p in probe["inst"]["path"] if not p.endswith("no_geometry.dcm")]
    res = ncct.convert_ct_series(paths, tmp_path / "ct.nii.gz", {"spacing_mm": 2.0, "matrix": [128, 128]},
                                 excluded_files=probe["series"]["excluded_files"])
    assert res.status == "partial" and "3 file(s) of the series could not be used" in res.reason
    assert "truncated file" in res.reason and (tmp_path / "ct.nii.gz").exists()


def test_dcm2niix_partial_names_the_missing_file(probe, tmp_path):
    """Before: dcm2niix's "Check sorted order … volume index ranges" (or a silent gap)
    and status `converted`; now the row is `partial` and names the unusable files."""
    paths = sorted(Path(p) for p in probe["inst"]["path"] if not p.endswith("no_geometry.dcm"))
    res = d2n.convert_series(paths, tmp_path / "nii", "probe", excluded_files=probe["series"]["excluded_files"])
    assert res.status == "partial", res.reason
    assert "truncated file" in res.reason and "unreadable pixels" in res.reason
    assert share_safe_text(res.reason) == res.reason
    res = d2n.convert_series(paths, tmp_path / "nii2", "probe")
    assert res.status == "converted"
