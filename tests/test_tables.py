"""share/tables/series: one row per selected series, all units aggregated at once
(expected values written by hand)."""
from __future__ import annotations

import math

import pandas as pd

from dicomprep.paths import layout
from dicomprep.tables import series_share_table


def _write(path, frame: pd.DataFrame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)


def test_series_table_aggregates_every_unit_by_hand(tmp_path):
    lay = layout(tmp_path)
    units = pd.DataFrame({"unit": ["g/s/A/1", "g/s/B/1"], "group": ["g", "g"], "sequence": ["s", "s"],
                          "subject": ["A", "B"], "scan": ["1", "1"], "stages": ["deid;dcm2niix", "ncct"]})
    _write(lay.unit_series("g/s/A/1"), pd.DataFrame({"series_key": ["ka2", "ka1"], "series_id": ["s002", "s001"],
                                                    "kind": ["t1", "dwi"], "Modality": ["MR", "MR"],
                                                    "n_instances": [2, 4], "SeriesDescription": ["x", "y"]}))
    _write(lay.unit_series("g/s/B/1"), pd.DataFrame({"series_key": ["kb1"], "series_id": ["s001"], "kind": ["ct_axial"],
                                                    "Modality": ["CT"], "n_instances": [30], "SeriesDescription": ["z"]}))
    _write(lay.stage_manifest("deid", "g/s/A/1"), pd.DataFrame({
        "series_key": ["ka1", "ka1", "ka1", "ka1", "ka2", "ka2"],
        "status": ["written", "written", "dropped", "written", "written", "written"],
        "reason": ["", "", "burned-in text in /in/SMITH/IM3.dcm", "", "", ""]}))
    _write(lay.stage_manifest("dcm2niix", "g/s/A/1"), pd.DataFrame({
        "series_key": ["ka1", "ka1"], "status": ["converted", "converted"], "reason": ["", ""],
        "outputs": ["share/nifti/g/s/A/1/b.nii.gz", "share/nifti/g/s/A/1/a.nii.gz"]}))
    _write(lay.stage_manifest("ncct", "g/s/B/1"), pd.DataFrame({
        "series_key": ["kb1"], "status": ["failed"], "reason": ["cannot stack slices of /in/SMITH/ct"], "outputs": [""]}))
    table = series_share_table(tmp_path, units)
    assert list(table.columns) == ["unit", "scan", "subject", "sequence", "group", "series_id", "kind", "Modality",
                                   "n_instances", "deid_written", "deid_status", "deid_reason", "dcm2niix_status",
                                   "dcm2niix_reason", "dcm2niix_outputs", "ncct_status", "ncct_reason", "ncct_outputs"]
    assert table["unit"].tolist() == ["g/s/A/1", "g/s/A/1", "g/s/B/1"]
    assert table["series_id"].tolist() == ["s001", "s002", "s001"]          # sorted by unit, series
    a1, a2, b1 = (table.iloc[i] for i in range(3))
    assert (a1["subject"], a1["n_instances"], a1["deid_written"], a1["deid_status"]) == ("A", 4, 3, "dropped;written")
    assert a1["deid_reason"] == "burned-in text in <path>"                  # no input path in share/
    assert a1["dcm2niix_outputs"] == "share/nifti/g/s/A/1/b.nii.gz;share/nifti/g/s/A/1/a.nii.gz"   # manifest order
    assert (a2["deid_written"], a2["deid_status"], a2["deid_reason"]) == (2, "written", "")
    assert pd.isna(a2["dcm2niix_status"]) and pd.isna(a1["ncct_status"])
    assert (b1["ncct_status"], b1["ncct_reason"]) == ("failed", "cannot stack slices of <path>")
    assert math.isnan(b1["deid_written"])                                  # unit B has no deid stage
    assert "SeriesDescription" not in table
