"""STEAM adjusted b-values on synthetic cardiac STEAM series built here.

Expected values are written out by hand from the rule in issue 4 item 4
(adjusted = nominal × RR / assumed RR; b = 0 takes the real b0; RR from
NominalInterval, else half the gap between acquisition times with modified
z-score > 3.5 outliers replaced by the mean of their neighbours).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomprep.convert import dcm2niix as d2n
from dicomprep.convert import steam
from dicomprep.errors import DicomprepError

MR = "1.2.840.10008.5.1.4.1.1.4"


def _frame(i, *, series_uid, b, direction, rr, time, comments, manufacturer="SIEMENS", seed=0):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID = MR, uid
    ds.Modality, ds.Manufacturer = "MR", manufacturer
    ds.PatientID, ds.PatientName = "X", "X^Y"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 5, i + 1, 1
    ds.SeriesDescription = "STEAM DTI"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    ds.ScanningSequence, ds.SequenceVariant, ds.SequenceName = "EP", "SK", "*stm_dti"
    ds.ImagePositionPatient = [-100.0, -100.0, 20.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 8.0
    ds.EchoTime, ds.RepetitionTime = 23.0, 2000.0
    ds.NominalInterval = rr
    ds.AcquisitionTime = time
    ds.ImageComments = comments
    ds.DiffusionBValue = float(b)
    ds.DiffusionGradientOrientation = list(map(float, direction))
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed * 100 + i)
    ds.PixelData = rng.integers(0, 4000, (16, 16), dtype=np.uint16).tobytes()
    return ds


BVALS = [0, 400, 400, 400, 400, 400]
DIRS = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.7071, 0.7071, 0], [0, 0.7071, 0.7071]]


def _write_series(folder: Path, rr, times, comments, *, seed=0, manufacturer="SIEMENS") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    paths = []
    for i, (b, d) in enumerate(zip(BVALS, DIRS)):
        ds = _frame(i, series_uid=uid, b=b, direction=d, rr=rr[i], time=times[i], comments=comments,
                    manufacturer=manufacturer, seed=seed)
        p = folder / f"{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def _read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _by_frame(rows):
    return {int(r["frame_index"]): r for r in rows}


def test_parse_image_comments():
    assert steam.parse_image_comments("b0 = 30, RR = 1000") == (30.0, 1000.0)
    assert steam.parse_image_comments("RR: 950 b0: 25") == (25.0, 950.0)
    assert steam.parse_image_comments("35 1100") == (35.0, 1100.0)
    assert steam.parse_image_comments("b0 35") == (35.0, None)
    assert steam.parse_image_comments("42") == (42.0, None)
    assert steam.parse_image_comments("Unaliased MB3/PE3/LB SENSE1") == (None, None)
    assert steam.parse_image_comments("") == (None, None)


def test_rr_from_acquisition_times_by_hand():
    # gaps 2.0, 2.2, 2.0, 9.0, 2.1 s; per frame (last repeats) 2.0 2.2 2.0 9.0 2.1 2.1
    # median 2.1, MAD 0.1 -> 9.0 has z = 0.6745*6.9/0.1 = 46.5 > 3.5 -> (2.0+2.1)/2
    rr, outlier = steam.rr_from_acquisition_times([0, 2.0, 4.2, 6.2, 15.2, 17.3])
    np.testing.assert_allclose(rr, [1000, 1100, 1000, 1025, 1050, 1050], atol=1e-6)
    assert outlier.tolist() == [False, False, False, True, False, False]


def test_steam_csv_from_nominal_interval(tmp_path):
    rr = [900, 1000, 1100, 950, 1200, 800]
    paths = _write_series(tmp_path / "in", rr, [f"1200{i:02d}.000" for i in range(6)], "b0 = 30, RR = 1000")
    res = d2n.convert_series(paths, tmp_path / "out", "P_S_s005", sequence_folder="STEAM")
    assert res.status == "converted", res.reason
    assert res.seq_type == "steam"
    csv_path = tmp_path / "out" / "P_S_s005.csv"
    assert csv_path in res.outputs
    rows = _read_csv(csv_path)
    assert list(rows[0]) == ["b_value", "adjusted_b_value", "rr_interval_ms", "assumed_rr_ms", "frame_index",
                             "slice_index", "source"]
    bval = (tmp_path / "out" / "P_S_s005.bval").read_text().split()
    assert [r["b_value"] for r in rows] == bval               # .bval order
    # by hand: b0 frame -> 30*900/1000 = 27; b400 frames -> 400*rr/1000
    expected = {0: 27.0, 1: 400.0, 2: 440.0, 3: 380.0, 4: 480.0, 5: 320.0}
    got = _by_frame(rows)
    assert set(got) == set(expected)
    for f, value in expected.items():
        assert float(got[f]["adjusted_b_value"]) == pytest.approx(value)
        assert float(got[f]["rr_interval_ms"]) == rr[f]
        assert float(got[f]["assumed_rr_ms"]) == 1000
        assert got[f]["slice_index"] == "0"
        assert "NominalInterval" in got[f]["source"]


def test_steam_csv_from_acquisition_times(tmp_path):
    # NominalInterval 0 -> RR from acquisition times (see test above): 1000 1100 1000 1025 1050 1050
    times = ["120000.000", "120002.000", "120004.200", "120006.200", "120015.200", "120017.300"]
    paths = _write_series(tmp_path / "in", [0] * 6, times, "b0 = 20, RR = 800", seed=1)
    res = d2n.convert_series(paths, tmp_path / "out", "x", sequence_folder="steam-dti")
    assert res.status == "converted", res.reason
    got = _by_frame(_read_csv(tmp_path / "out" / "x.csv"))
    rr = {0: 1000, 1: 1100, 2: 1000, 3: 1025, 4: 1050, 5: 1050}
    expected = {0: 20 * 1000 / 800, 1: 400 * 1100 / 800, 2: 400 * 1000 / 800, 3: 400 * 1025 / 800,
                4: 400 * 1050 / 800, 5: 400 * 1050 / 800}
    for f, value in expected.items():
        assert float(got[f]["rr_interval_ms"]) == pytest.approx(rr[f])
        assert float(got[f]["adjusted_b_value"]) == pytest.approx(value)
        assert float(got[f]["assumed_rr_ms"]) == 800
        assert "acquisition times" in got[f]["source"]
    assert "outlier replaced" in got[3]["source"]


def test_steam_defaults_when_no_comments(tmp_path):
    paths = _write_series(tmp_path / "in", [1200] * 6, [f"1200{i:02d}.000" for i in range(6)], "", seed=2)
    res = d2n.convert_series(paths, tmp_path / "out", "x", sequence_folder="STEAM",
                             steam={"assumed_rr_ms": 1000, "b0_default": 15})
    got = _by_frame(_read_csv(tmp_path / "out" / "x.csv"))
    assert float(got[0]["adjusted_b_value"]) == pytest.approx(15 * 1.2)
    assert float(got[1]["adjusted_b_value"]) == pytest.approx(480)
    assert "assumed_rr=config" in got[1]["source"] and "b0=config" in got[0]["source"]


def test_se_series_has_no_csv(tmp_path):
    paths = _write_series(tmp_path / "in", [1000] * 6, [f"1200{i:02d}.000" for i in range(6)], "", seed=3)
    res = d2n.convert_series(paths, tmp_path / "out", "x", sequence_folder="SE")
    assert res.status == "converted" and res.seq_type == "se"
    assert not (tmp_path / "out" / "x.csv").exists()


def _philips_log(path: Path, rows) -> Path:
    path.write_text("b_value,gx,gy,gz,mixing_time_ms,assumed_rr_ms\n"
                    + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_philips_steam_from_log(tmp_path):
    paths = _write_series(tmp_path / "in", [0] * 6, [f"1200{i:02d}.000" for i in range(6)], "", seed=4,
                          manufacturer="Philips Medical Systems")
    mix = [None, 900, 1000, 1100, 1200, 950]
    log = _philips_log(tmp_path / "log.csv", [(0, 0, 0, 0, 1000, 1000)] + [
        (400, *(-np.array(d)), mix[i], 1000) for i, d in enumerate(DIRS) if i])   # opposite sign: same axis
    res = d2n.convert_series(paths, tmp_path / "out", "x", sequence_folder="STEAM",
                             steam={"philips_log": str(log), "b0_default": 10})
    assert res.status == "converted", res.reason
    got = _by_frame(_read_csv(tmp_path / "out" / "x.csv"))
    assert float(got[0]["adjusted_b_value"]) == pytest.approx(10.0)
    for f in range(1, 6):
        assert float(got[f]["adjusted_b_value"]) == pytest.approx(400 * mix[f] / 1000)


def test_philips_steam_errors(tmp_path):
    paths = _write_series(tmp_path / "in", [0] * 6, [f"1200{i:02d}.000" for i in range(6)], "", seed=5,
                          manufacturer="Philips")
    res = d2n.convert_series(paths, tmp_path / "out", "x", sequence_folder="STEAM", steam={})
    assert res.status == "failed" and "convert.steam.philips_log" in res.reason
    log = _philips_log(tmp_path / "log.csv", [(0, 0, 0, 0, 1000, 1000), (0, 0, 0, 0, 900, 1000)]
                       + [(400, *d, 1000, 1000) for d in DIRS[1:]])
    with pytest.raises(DicomprepError, match="different mixing times"):
        steam.philips_rows([0.0], [[(steam.FrameInfo(0, 0, direction=None), 0)]], {"philips_log": str(log)})


def test_volume_alignment_on_real_philips_dwi(testdata, tmp_path):
    """Philips classic DWI with scrambled InstanceNumbers (dcm2niix orders the
    volumes by private tags): every NIfTI volume must be matched to frames whose
    own DiffusionBValue equals that volume's b-value in the upstream reference."""
    paths = sorted((testdata / "dcm_qa_philips_dwi" / "In" / "cl" / "DICOM").glob("IM_*.gz"))
    res = d2n.convert_series(paths, tmp_path, "x", compress=False)
    assert res.status == "converted", res.reason
    ref = [float(x) for x in (testdata / "dcm_qa_philips_dwi" / "Ref" /
                              "701_DTI_Biobank_2mm_MB3S2_EPI_cl.bval").read_text().split()]
    frames, facts = steam.read_frames(paths)
    volumes, note = steam.align_volumes(tmp_path / "x.nii", frames, len(ref))
    assert note == "" and len(volumes) == len(ref)
    assert sorted({f.frame_index for v in volumes for f, _ in v}) == list(range(len(frames)))
    for b, vol in zip(ref, volumes):
        assert {round(f.b_value, 3) for f, _ in vol} == {round(b, 3)}
        assert sorted(z for _, z in vol) == list(range(len(vol)))


def _enhanced(tmp_path: Path, rr, times) -> Path:
    """Enhanced MR (PS3.3 C.8.13) with per-frame CardiacSynchronizationSequence
    RRIntervalTimeNominal, FrameContentSequence and MRDiffusionSequence."""
    ds = _frame(0, series_uid=generate_uid(), b=0, direction=[0, 0, 0], rr=0, time="", comments="b0=25 RR=1000")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    for name in ("NominalInterval", "AcquisitionTime", "DiffusionBValue", "DiffusionGradientOrientation",
                 "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, name)
    frames = []
    for k, (b, r, t) in enumerate(zip([0, 350, 350, 350], rr, times)):
        g = Dataset()
        cs = Dataset(); cs.RRIntervalTimeNominal = r
        fc = Dataset(); fc.FrameAcquisitionDateTime = t
        md = Dataset(); md.DiffusionBValue = float(b)
        dg = Dataset(); dg.DiffusionGradientOrientation = [1.0, 0.0, 0.0]
        md.DiffusionGradientDirectionSequence = [dg]
        g.CardiacSynchronizationSequence, g.FrameContentSequence, g.MRDiffusionSequence = [cs], [fc], [md]
        frames.append(g)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = 4
    ds.PixelData = np.random.default_rng(7).integers(0, 4000, (4, 16, 16), dtype=np.uint16).tobytes()
    path = tmp_path / "enh.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_rr_interval_and_frame_times(tmp_path):
    path = _enhanced(tmp_path, [800, 1000, 1200, 900], ["20240101120000"] * 4)
    frames, _ = steam.read_frames([path])
    assert [f.rr_attr for f in frames] == ["RRIntervalTimeNominal"] * 4
    vols = [[(f, 0)] for f in sorted(frames, key=lambda f: f.frame_index)]
    rows = steam.siemens_rows([0, 350, 350, 350], vols, frames, {})
    # by hand: 25*800/1000, 350*1000/1000, 350*1200/1000, 350*900/1000
    assert [r["adjusted_b_value"] for r in rows] == pytest.approx([20.0, 350.0, 420.0, 315.0])
    assert [r["frame_index"] for r in rows] == [0, 1, 2, 3]

    path = _enhanced(tmp_path, [0, 0, 0, 0], ["20240101120000.0", "20240101120001.8",
                                              "20240101120003.8", "20240101120005.6"])
    frames, _ = steam.read_frames([path])
    vols = [[(f, 0)] for f in sorted(frames, key=lambda f: f.frame_index)]
    rows = steam.siemens_rows([0, 350, 350, 350], vols, frames, {})
    # gaps 1.8, 2.0, 1.8 (last repeats) -> RR 900, 1000, 900, 900
    assert [r["rr_interval_ms"] for r in rows] == pytest.approx([900, 1000, 900, 900])
    assert [r["adjusted_b_value"] for r in rows] == pytest.approx([25 * 0.9, 350, 315, 315])


# --- the demo cohort's cardiac series (src/dicomprep/demo.py) ----------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from dicomprep.demo import make_demo

    root = tmp_path_factory.mktemp("demo")
    return root, make_demo(root / "in")


def _expected_rr(images: list[dict], from_header: bool) -> dict[int, float]:
    """RR per instance from the demo's ground truth. With NominalInterval 0 the
    estimate is half the gap to the next image = the true RR inside a
    breath-hold; the last image of a breath-hold (gap includes the 12-16 s
    pause) is an outlier and gets the mean of its neighbours' estimates, i.e.
    of the previous and the next image's true RR; the very last image uses the
    gap from the previous one."""
    rr = {im["instance"]: im["rr_ms"] for im in images}
    if from_header:
        return rr
    n = len(images)
    out = {}
    for i in range(1, n + 1):
        if i == n:
            out[i] = rr[i - 1]
        elif i % 3 == 0:                       # three images per breath-hold
            out[i] = (rr[i - 1] + rr[i + 1]) / 2
        else:
            out[i] = rr[i]
    return out


@pytest.mark.parametrize("index", [1, 3, 4])
def test_demo_steam_adjusted_bvalues(demo, index, tmp_path):
    root, manifest = demo
    series = manifest["cdti"][index]
    assert series["sequence"] == "STEAM"
    paths = [root / "in" / im["file"] for im in series["images"]]
    res = d2n.convert_series(paths, tmp_path, "x", sequence_folder=series["sequence"])
    assert res.status == "converted", res.reason
    assert res.seq_type == "steam"
    rows = _read_csv(tmp_path / "x.csv")
    assert len(rows) == series["n_volumes"] * series["n_slices"]
    bval = (tmp_path / "x.bval").read_text().split()
    assert [r["b_value"] for r in rows[::series["n_slices"]]] == bval
    assumed = series["assumed_rr_ms"] or 1000.0                 # config default
    b0 = series["b0_real"]
    expected_rr = _expected_rr(series["images"], series["rr_source"] == "NominalInterval")
    by_instance = {im["instance"]: im for im in series["images"]}
    seen = set()
    for r in rows:
        inst = int(r["frame_index"]) + 1
        image = by_instance[inst]
        seen.add(inst)
        assert float(r["b_value"]) == image["b_value"]
        nominal = image["b_value"] or b0
        assert float(r["rr_interval_ms"]) == pytest.approx(expected_rr[inst], abs=1.0)
        assert float(r["adjusted_b_value"]) == pytest.approx(nominal * expected_rr[inst] / assumed, rel=2e-3)
        assert float(r["assumed_rr_ms"]) == assumed
    assert seen == set(by_instance)
    if series["rr_source"] != "NominalInterval":
        assert all("acquisition times" in r["source"] for r in rows)


def test_demo_se_series_is_se(demo, tmp_path):
    root, manifest = demo
    series = manifest["cdti"][0]
    paths = [root / "in" / im["file"] for im in series["images"]]
    res = d2n.convert_series(paths, tmp_path, "x", sequence_folder=series["sequence"])
    assert res.status == "converted" and res.seq_type == "se"
    assert not (tmp_path / "x.csv").exists()
    # folder says nothing: the DICOM attributes (SequenceName *steam2d…) decide
    steam_series = manifest["cdti"][1]
    res = d2n.convert_series([root / "in" / im["file"] for im in steam_series["images"]], tmp_path / "b", "x",
                             sequence_folder="dicom")
    assert res.seq_type == "steam", res.seq_source


def test_midnight_wrap_keeps_gaps():
    # acquisition across 24:00 (e.g. after a de-identification time shift)
    wrapped = [86396.0, 86398.0, 0.2, 2.2]
    assert steam.unwrap_midnight(wrapped) == [86396.0, 86398.0, 86400.2, 86402.2]
    frames = [steam.FrameInfo(0, 0, frame_index=i, time_s=t) for i, t in enumerate(wrapped)]
    est = steam.estimated_rr(frames)
    assert [round(est[i][0], 6) for i in range(4)] == [1000.0, 1100.0, 1000.0, 1000.0]


@pytest.mark.parametrize("index", [1, 4])
def test_demo_steam_survives_cdti_deidentification(demo, index, tmp_path):
    """Same adjusted b-values from the de-identified copy (cdti preset: dates and
    times shifted, ImageComments cleaned but kept) as from the originals."""
    import pandas as pd

    from dicomprep.deid.dataset import make_deidentifier
    from dicomprep.deid.unit import deidentify_unit
    root, manifest = demo
    series = manifest["cdti"][index]
    paths = [root / "in" / im["file"] for im in series["images"]]
    table = pd.DataFrame({"path": [str(p) for p in paths], "series_key": "k", "series_id": "s001",
                          "kind": "dwi", "InstanceNumber": [im["instance"] for im in series["images"]]})
    deid = make_deidentifier({"deid": {"preset": "cdti"}}, b"steam-test-secret-0123456789abcdef")
    out, _, _ = deidentify_unit(table, share_dir=tmp_path / "share", deid=deid, drop_cfg={"max_instances": 0})
    assert (out["status"] == "written").all()
    deid_paths = [Path(p) for p in out["output_path"]]
    a = d2n.convert_series(paths, tmp_path / "a", "x", sequence_folder="STEAM")
    b = d2n.convert_series(deid_paths, tmp_path / "b", "x", sequence_folder="STEAM")
    assert a.status == b.status == "converted", (a.reason, b.reason)
    ra, rb = _read_csv(tmp_path / "a" / "x.csv"), _read_csv(tmp_path / "b" / "x.csv")
    assert [r["adjusted_b_value"] for r in ra] == [r["adjusted_b_value"] for r in rb]
    assert [r["source"] for r in ra] == [r["source"] for r in rb]


def test_comments_of_the_originals_when_de_identification_removed_them(tmp_path):
    """A probe's finding: the basic profile removes ImageComments (0020,4000), where the
    scanner writes the real b0 and the assumed RR, so the de-identified copies gave
    the config defaults with no warning. The stage reads them from the input files."""
    from dicomprep.deid.dataset import make_deidentifier
    from dicomprep.deid.instance import deidentify_file

    rr = [900, 1000, 1100, 950, 1200, 800]
    originals = _write_series(tmp_path / "in", rr, [f"1200{i:02d}.000" for i in range(6)], "b0 = 30, RR = 1000")
    deid = make_deidentifier({"deid": {}}, b"steam-test-secret-0123456789abcdef")
    copies = []
    for i, p in enumerate(originals):
        copies.append(tmp_path / "copies" / f"{i:04d}.dcm")
        deidentify_file(deid, p, copies[-1])
    from pydicom import dcmread

    assert "ImageComments" not in dcmread(copies[0], stop_before_pixels=True)   # what the probe met
    for given, assumed_from in ((None, "config"), (originals, "ImageComments")):
        out = tmp_path / f"out-{assumed_from}"
        res = d2n.convert_series(copies, out, "x", sequence_folder="STEAM", originals=given,
                                 steam={"assumed_rr_ms": 850, "b0_default": 15})
        assert res.status == "converted", res.reason
        got = _by_frame(_read_csv(out / "x.csv"))
        assert f"assumed_rr={assumed_from}" in got[1]["source"]
    # by hand, from the originals' comments: b0 30 x 900/1000, b400 x RR/1000
    assert float(got[0]["adjusted_b_value"]) == pytest.approx(27.0)
    assert float(got[4]["adjusted_b_value"]) == pytest.approx(480.0)
