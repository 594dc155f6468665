"""dcm2niix conversion against the upstream dcm2niix references in shared data.

References: each dcm_qa_* repository's own ``Ref/`` outputs (written by
dcm2niix upstream), compared voxel by voxel after applying each file's own
scaling, affines within 1e-4 mm, bval exact, bvec within 1e-4.
"""
from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import shutil

import pandas as pd
import pytest

from dicomprep.convert import dcm2niix as d2n

# (case id, dataset, input glob relative to dataset, reference basenames {our suffix: ref basename})
CASES = [
    ("ge_r2", "dcm_qa_ge", "In/01_Ax_DWI_TENSOR_R2/*", {"": "Ax_DWI_TENSOR_R2_1"}),
    ("ge_r3", "dcm_qa_ge", "In/02_Ax_DWI_TENSOR_R3/*", {"": "Ax_DWI_TENSOR_R3_2"}),
    ("xa30i", "dcm_qa_xa30i", "In/11001_DWI_dir80_AP/*.dcm.gz", {"": "11001_DWI_dir80_AP"}),
    ("nih_si_ap", "dcm_qa_nih", "In/20180918Si/mr_0003/*.dcm", {"": "EPI_PE=AP_3"}),
    ("nih_si_pa", "dcm_qa_nih", "In/20180918Si/mr_0004/*.dcm", {"": "EPI_PE=PA_4"}),
    ("nih_si_rl", "dcm_qa_nih", "In/20180918Si/mr_0005/*.dcm", {"": "EPI_PE=RL_5"}),
    ("nih_si_lr", "dcm_qa_nih", "In/20180918Si/mr_0006/*.dcm", {"": "EPI_PE=LR_6"}),
    ("nih_ge_4", "dcm_qa_nih", "In/20180918GE/mr_0004/*.dcm", {"": "DCM2NIIX_regression_test_4"}),
    ("nih_ge_5", "dcm_qa_nih", "In/20180918GE/mr_0005/*.dcm", {"": "DCM2NIIX_regression_test_5"}),
    ("nih_ge_6", "dcm_qa_nih", "In/20180918GE/mr_0006/*.dcm", {"": "DCM2NIIX_regression_test_6"}),
    ("nih_ge_7", "dcm_qa_nih", "In/20180918GE/mr_0007/*.dcm", {"": "DCM2NIIX_regression_test_7"}),
    *[(f"ts_{i}", "dcm_qa_ts", f"In/{i}.dcm", {"": str(i)}) for i in range(1, 10)],
    ("enh_philips", "dcm_qa_enh", "In/Philips/IM_0027_fMAP.dcm",
     {"_e1": "Philips_WIP_B0_NS_801_e1", "_e2_fieldmaphz": "Philips_WIP_B0_NS_801_e2_fieldmaphz"}),
    ("enh_siemens", "dcm_qa_enh", "In/Siemens/XA10/6_*.dcm", {"": "Siemens_REST1_w_SMS_PF7-8_6"}),
    ("philips_dwi", "dcm_qa_philips_dwi", "In/cl/DICOM/IM_*.gz", {"": "701_DTI_Biobank_2mm_MB3S2_EPI_cl"}),
]
IDS = [c[0] for c in CASES]


def _ref_file(ref_dir: Path, base: str, suffix: str) -> Path | None:
    for cand in (ref_dir / f"{base}{suffix}", ref_dir / f"{base}{suffix}.gz"):
        if cand.is_file():
            return cand
    return None


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()


@pytest.fixture(scope="module")
def converted(testdata, tmp_path_factory):
    """Every case converted once with convert_series (compressed, scrubbed)."""
    out = tmp_path_factory.mktemp("nifti")
    results = {}
    for case, dataset, pattern, _ in CASES:
        paths = sorted((testdata / dataset).glob(pattern))
        assert paths, f"no input for {case}"
        results[case] = d2n.convert_series(paths, out / case, f"P1_S1_{case}", log=out / "log.txt")
    return out, results


@pytest.mark.parametrize("case", IDS)
def test_matches_dcm2niix_reference(case, converted, testdata):
    out, results = converted
    _, dataset, _, refs = next(c for c in CASES if c[0] == case)
    res = results[case]
    assert res.status == "converted", res.reason
    ref_dir = testdata / dataset / "Ref"
    for suffix, ref_base in refs.items():
        ours = out / case / f"P1_S1_{case}{suffix}"
        ref_nii = _ref_file(ref_dir, ref_base, ".nii")
        if ref_nii is not None:
            a, b = nib.load(str(ours) + ".nii.gz"), nib.load(str(ref_nii))
            assert a.shape == b.shape
            np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        ref_bval = _ref_file(ref_dir, ref_base, ".bval")
        if ref_bval is not None:
            ours_b = np.array(Path(str(ours) + ".bval").read_text().split(), float)
            np.testing.assert_array_equal(ours_b, np.array(_read_text(ref_bval).split(), float))
            ours_v = np.loadtxt(str(ours) + ".bvec")
            np.testing.assert_allclose(ours_v, np.loadtxt(_read_text(ref_bval.with_name(
                ref_bval.name.replace(".bval", ".bvec"))).splitlines()), atol=1e-4)
        else:
            assert not Path(str(ours) + ".bval").exists()


def test_outputs_are_named_by_stem_only(converted):
    out, results = converted
    res = results["enh_philips"]
    names = sorted(p.name for p in res.outputs)
    assert names == sorted(f"P1_S1_enh_philips{s}{e}" for s in ("_e1", "_e2_fieldmaphz")
                           for e in (".json", ".nii.gz"))
    for r in results.values():
        assert all(p.name.startswith(r.stem) for p in r.outputs)
    # no staging or work folders left behind
    assert not [p for p in out.rglob("*dcm2niix-*")]


def test_sidecar_keeps_only_allowlist(converted):
    out, results = converted
    allowed = set(d2n.default_sidecar_keys())
    forbidden = {"InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
                 "AcquisitionTime", "ImageComments", "StudyDescription", "ProtocolName",
                 "PatientName", "PatientID", "AcquisitionDateTime", "WipMemBlock"}
    for res in results.values():
        for p in res.outputs:
            if p.suffix == ".json":
                keys = set(json.loads(p.read_text()))
                assert keys <= allowed
                assert not keys & forbidden
                text = p.read_text()
                for word in ("Indiana", "Bloomington", "67093", "MRC35062", "Regression"):
                    assert word not in text


def test_header_text_fields_cleared(converted):
    out, results = converted
    for res in results.values():
        for p in res.outputs:
            if p.name.endswith(".nii.gz"):
                hdr = nib.load(str(p)).header
                for key in ("descrip", "aux_file", "db_name", "intent_name"):
                    assert bytes(hdr[key].tobytes()).strip(b"\x00") == b"", (p, key)


def test_scrub_keeps_data_bit_identical(testdata, tmp_path):
    """Compare with dcm2niix's own unscrubbed output of the same files."""
    src = testdata / "dcm_qa_enh" / "In" / "Philips" / "IM_0027_fMAP.dcm"
    raw = tmp_path / "raw"
    raw.mkdir()
    subprocess.run([d2n.dcm2niix_binary(), "-f", "x", "-z", "n", "-o", str(raw), str(src)],
                   check=True, capture_output=True)
    res = d2n.convert_series([src], tmp_path / "ours", "y", compress=True)
    assert res.status == "converted"
    for suffix in ("_e1", "_e2_fieldmaphz"):
        ref = (raw / f"x{suffix}.nii").read_bytes()
        ours = gzip.decompress((tmp_path / "ours" / f"y{suffix}.nii.gz").read_bytes())
        assert len(ours) == len(ref)
        assert nib.load(raw / f"x{suffix}.nii").header["descrip"].tobytes().strip(b"\x00")  # had text
        mask = np.ones(len(ref), bool)
        for off, n in d2n.NIFTI1_TEXT_FIELDS.values():
            mask[off:off + n] = False
        a, b = np.frombuffer(ref, np.uint8), np.frombuffer(ours, np.uint8)
        assert np.array_equal(a[mask], b[mask])           # data, scaling, datatype, affine
        assert not b[~mask].any()                          # text fields zeroed


def test_failed_series_reports_reason(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    res = d2n.convert_series([junk], tmp_path / "o", "bad")
    assert res.status == "failed"
    assert res.reason
    assert not list((tmp_path / "o").iterdir())


def test_sequence_type_detection():
    assert d2n.detect_sequence_type("STEAM_dti", None) == ("steam", "sequence folder")
    assert d2n.detect_sequence_type("se-m012", None)[0] == "se"
    assert d2n.detect_sequence_type("dicom", None, {"SequenceName": "*stm_b400"})[0] == "steam"
    assert d2n.detect_sequence_type("dicom", None, {"PulseSequenceDetails": "%CustomerSeq%\\steam_diff"})[0] == "steam"
    assert d2n.detect_sequence_type("dicom", None, {"ScanningSequence": "SE\\EP"})[0] == "se"
    assert d2n.detect_sequence_type("STEAM", None, diffusion=False)[0] == "none"


def test_naming():
    assert d2n.default_stem("PABC", "S12", "s003", "DTI STEAM / b 400") == "PABC_S12_s003_DTI-STEAM-b-400"
    assert d2n.default_stem("PABC", "S12", "s003", "") == "PABC_S12_s003"
    assert d2n.bids_stem("PABC", "S12", "s003", "t1_mprage", "mr") == "sub-PABC_ses-S12_acq-t1mprage_run-3_T1w"
    assert d2n.bids_stem("PABC", "S12", "s010", None, "dwi") == "sub-PABC_ses-S12_run-10_dwi"


def test_select_series_files_drops_derived_from_mixed_series():
    inst = pd.DataFrame({
        "source_path": ["a", "b", "c"], "InstanceNumber": [2, 1, 3],
        "ImageType": ["ORIGINAL\\PRIMARY\\DIFFUSION", "ORIGINAL\\PRIMARY", "DERIVED\\PRIMARY\\ADC"],
    })
    paths, n = d2n.select_series_files(inst)
    assert [p.name for p in paths] == ["b", "a"] and n == 1
    paths, n = d2n.select_series_files(inst, include_derived=True)
    assert len(paths) == 3 and n == 0


def _unit_tables(out_dir: Path, unit: str, series: list[tuple[str, str, str, list[Path]]]) -> None:
    """Write private/units/{unit}/ tables as select.py does (docs/contracts.md)."""
    folder = out_dir / "private" / "units" / unit
    folder.mkdir(parents=True)
    srows, irows = [], []
    for key, sid, kind, paths in series:
        srows.append({"series_key": key, "series_id": sid, "kind": kind, "unit": unit})
        for i, p in enumerate(paths):
            irows.append({"path": str(p), "series_key": key, "series_id": sid, "unit": unit,
                          "InstanceNumber": i + 1, "ImageType": "ORIGINAL\\PRIMARY"})
    pd.DataFrame(srows).to_parquet(folder / "series.parquet")
    pd.DataFrame(irows).to_parquet(folder / "instances.parquet")


def test_convert_dcm2niix_stage(testdata, tmp_path):
    from test_steam import _write_series

    unit = "cdti/STEAM/PABC/S1X"
    steam_paths = _write_series(tmp_path / "src" / "steam", [900, 1000, 1100, 950, 1200, 800],
                                [f"1200{i:02d}.000" for i in range(6)], "b0 = 30, RR = 1000")
    ge = sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())
    junk = tmp_path / "src" / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)
    _unit_tables(tmp_path, unit, [
        ("k1", "s005", "dwi", steam_paths), ("k2", "s001", "mr", ge),
        ("k3", "s900", "seg", ge[:1]), ("k4", "s007", "mr", [junk]),
    ])
    config = {"anonymisation": False, "convert": {"dcm2niix": {"kinds": ["dwi", "mr"]}, "steam": {}}}
    from dicomprep import stages
    from dicomprep.paths import layout

    stage = layout(tmp_path).stage_dir("dcm2niix", unit)
    manifest = stage / "manifest.parquet"

    def run_stage():
        stages.convert_dcm2niix(source="", stage=str(stage), done=str(stage) + '.done', unit=unit,
                                settings="", log=str(tmp_path / "log.txt"), config=config, threads=2)

    run_stage()
    got = pd.read_parquet(manifest).set_index("series_id")
    assert list(pd.read_parquet(manifest).columns) == d2n.MANIFEST_COLUMNS
    assert got.loc["s005", "status"] == "converted" and got.loc["s005", "seq_type"] == "steam"
    assert got.loc["s005", "n_volumes"] == 6
    assert "share/nifti/cdti/STEAM/PABC/S1X/PABC_S1X_s005_STEAM-DTI.csv" in got.loc["s005", "outputs"].split(";")
    assert got.loc["s001", "status"] == "converted" and got.loc["s001", "n_volumes"] == 7
    assert got.loc["s900", "status"] == "skipped" and "seg" in got.loc["s900", "reason"]
    assert got.loc["s007", "status"] == "failed" and got.loc["s007", "reason"]
    for entry in got["outputs"]:
        for rel in filter(None, entry.split(";")):
            assert (stage / rel).is_file()
    # re-run with BIDS names (Snakemake removes the stage directory before a re-run)
    shutil.rmtree(stage)
    config["convert"]["dcm2niix"]["naming"] = "bids"
    run_stage()
    again = pd.read_parquet(manifest)
    second = {rel for e in again["outputs"] for rel in filter(None, e.split(";"))}
    assert "share/nifti/cdti/STEAM/PABC/S1X/sub-PABC_ses-S1X_acq-STEAMDTI_run-5_dwi.nii.gz" in second
    on_disk = {str(p.relative_to(stage)) for p in (stage / "share").rglob("*") if p.is_file()}
    assert on_disk == second


def test_diffusion_series_loses_all_derived_images():
    inst = pd.DataFrame({"source_path": ["a", "b"], "InstanceNumber": [1, 2],
                         "ImageType": ["DERIVED\\PRIMARY\\ADC", "DERIVED\\PRIMARY\\FA"]})
    assert d2n.select_series_files(inst, diffusion=True) == ([], 2)
    assert len(d2n.select_series_files(inst, diffusion=False)[0]) == 2   # e.g. a reformat series


def test_uncompressed_output_is_dcm2niix_bytes_except_text_fields(testdata, tmp_path):
    src = sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())
    raw = tmp_path / "raw"
    raw.mkdir()
    subprocess.run([d2n.dcm2niix_binary(), "-f", "x", "-z", "n", "-o", str(raw), str(src[0].parent)],
                   check=True, capture_output=True)
    res = d2n.convert_series(src, tmp_path / "ours", "y", compress=False)
    assert sorted(p.name for p in res.outputs) == ["y.bval", "y.bvec", "y.json", "y.nii"]
    ref, ours = (raw / "x.nii").read_bytes(), (tmp_path / "ours" / "y.nii").read_bytes()
    mask = np.ones(len(ref), bool)
    for off, n in d2n.NIFTI1_TEXT_FIELDS.values():
        mask[off:off + n] = False
    assert len(ref) == len(ours)
    assert np.array_equal(np.frombuffer(ref, np.uint8)[mask], np.frombuffer(ours, np.uint8)[mask])
    assert (raw / "x.bval").read_text() == (tmp_path / "ours" / "y.bval").read_text()


def test_gzip_file_is_byte_identical_whatever_the_thread_count(testdata, tmp_path):
    """Issue 12.5: the .nii.gz written after the header scrub does not depend on the
    number of compression threads (fixed chunking, members written in order)."""
    src = tmp_path / "x.nii"
    src.write_bytes((testdata / "dcm_qa_ge" / "Ref" / "Ax_DWI_TENSOR_R2_1.nii").read_bytes() * 2)
    assert src.stat().st_size > 2 * d2n.GZIP_CHUNK
    outs = []
    for threads in (1, 2, 4):
        d2n.gzip_file(src, tmp_path / f"x{threads}.nii.gz", threads=threads)
        outs.append((tmp_path / f"x{threads}.nii.gz").read_bytes())
    assert outs[0] == outs[1] == outs[2]
    import gzip
    assert gzip.decompress(outs[0]) == src.read_bytes()


def test_a_volume_missing_from_the_export_is_said(testdata):
    """A probe's finding: GE DWI (7 volumes x 2 slices, instances 1-14) without instances
    7 and 8 converts to 6 volumes without a word from dcm2niix; the row's reason says
    which instance numbers are absent. The complete series gets no note."""
    import pandas as pd
    import pydicom

    from dicomprep.convert.dcm2niix import instance_number_gap

    paths = [p for p in sorted((testdata / "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2").iterdir()) if p.is_file()]
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert sorted(numbers) == list(range(1, 15))
    assert instance_number_gap(pd.DataFrame({"InstanceNumber": numbers})) == ""
    note = instance_number_gap(pd.DataFrame({"InstanceNumber": [n for n in numbers if n not in (7, 8)]}))
    assert note.startswith("instance numbers 1-14 lack 2 (7, 8)"), note
