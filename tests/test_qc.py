"""QC checks and pictures on small hand-made volumes (expected values by hand)."""
from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd

from dicomprep.paths import layout
from PIL import Image

from dicomprep.qc import checks, pictures
from dicomprep.qc.report import render
from dicomprep.qc.status import status_summary


def _nifti(path, data, zooms=(1.0, 1.0, 1.0)):
    aff = np.diag(list(zooms) + [1.0])
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return path


def test_mask_volume_in_ml(tmp_path):
    data = np.zeros((10, 10, 10), np.uint8)
    data[2:6, 2:6, 2:4] = 1                       # 4*4*2 = 32 voxels
    path = _nifti(tmp_path / "m.nii.gz", data, zooms=(0.5, 0.5, 2.0))   # 0.5 mm^3 per voxel
    found, ml = checks.mask_checks(path)
    assert found[0].status == "pass"
    assert abs(ml - 32 * 0.5 / 1000) < 1e-9
    empty = _nifti(tmp_path / "e.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert checks.mask_checks(empty)[0][0].status == "fail"


def test_diffusion_counts_and_norms(tmp_path):
    vol = _nifti(tmp_path / "d.nii.gz", np.ones((4, 4, 2, 3), np.float32))
    (tmp_path / "d.bval").write_text("0 1000 1000\n")
    (tmp_path / "d.bvec").write_text("0 1 0\n0 0 0.8\n0 0 0\n")
    found = {c.name: c for c in checks.diffusion_checks(vol, tmp_path / "d.bval", tmp_path / "d.bvec")}
    assert found["diffusion_counts"].status == "pass"
    assert found["b0"].status == "pass"
    assert found["gradient_norms"].status == "warn"      # second direction has norm 0.8
    (tmp_path / "d.bval").write_text("0 1000\n")
    found = {c.name: c for c in checks.diffusion_checks(vol, tmp_path / "d.bval", tmp_path / "d.bvec")}
    assert found["diffusion_counts"].status == "fail"


def test_ct_intensity_and_nan(tmp_path):
    ok = np.full((8, 8, 8), -1000, np.int16)
    ok[2:6, 2:6, 2:6] = 40
    assert all(c.status == "pass" for c in checks.intensity_checks(_nifti(tmp_path / "c.nii.gz", ok), True))
    bad = np.zeros((4, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    found = {c.name: c for c in checks.intensity_checks(_nifti(tmp_path / "n.nii.gz", bad), False)}
    assert found["finite"].status == "fail"


def test_steam_rr_plausibility(tmp_path):
    pd.DataFrame({"rr_interval_ms": [800, 950]}).to_csv(tmp_path / "ok.csv", index=False)
    pd.DataFrame({"rr_interval_ms": [120, 950]}).to_csv(tmp_path / "bad.csv", index=False)
    assert checks.steam_checks(tmp_path / "ok.csv")[0].status == "pass"
    assert checks.steam_checks(tmp_path / "bad.csv")[0].status == "warn"


def test_geometry_checks_from_index_row():
    row = pd.Series({"n_instances": 30, "n_frames": 30, "slice_spacing": 2.0, "spacing_min": 1.08,
                     "spacing_max": 7.0, "spacing_regular": False, "tilt_deg": 18.5, "orientation": "axial",
                     "n_duplicates": 0})
    found = {c.name: c for c in checks.geometry_checks(row)}
    assert found["spacing"].status == "warn" and "1.08" in found["spacing"].message
    assert found["tilt"].status == "warn" and "18.5" in found["tilt"].message


def test_picture_has_no_text_and_outline_marks_mask(tmp_path):
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = 100
    img = _nifti(tmp_path / "v.nii.gz", vol)
    mask = _nifti(tmp_path / "m.nii.gz", (vol > 0).astype(np.uint8))
    png = pictures.volume_picture(img, tmp_path / "v.png", mask=mask)
    pil = Image.open(png)
    assert pil.format == "PNG" and not pil.text and not pil.info.get("exif")
    arr = np.asarray(pil)
    assert (arr[..., 0] == 255).any() and (arr[..., 1] == 64).any()   # outline colour present


def test_report_and_status_from_files(tmp_path):
    out = tmp_path
    unit = "g/s/P1/S1"
    (out / "private" / "units" / unit).mkdir(parents=True)
    pd.DataFrame({"unit": [unit], "subject": ["P1"], "stages": ["deid;ncct"]}).to_csv(
        out / "private" / "units.csv", index=False)
    lay = layout(out)
    lay.stage_dir("deid", unit).mkdir(parents=True)
    pd.DataFrame({"series_key": ["a"], "status": ["written"]}).to_parquet(lay.stage_manifest("deid", unit))
    lay.log("ncct", unit).parent.mkdir(parents=True)
    lay.log("ncct", unit).write_text("ncct failed: no space left on device\n")   # ran, no manifest: failed
    qc = out / "share" / "qc" / unit
    qc.mkdir(parents=True)
    qc_json = {"unit": unit, "series": [{"series_id": "s001", "kind": "ct_axial", "modality": "CT", "status": "warn",
                                          "checks": [{"name": "tilt", "status": "warn", "message": "tilted <b>"}],
                                          "pictures": [], "outputs": [], "stages": {}}]}
    (qc / "qc.json").write_text(json.dumps(qc_json))
    html = render(out, verification={"status": "pass", "files_scanned": 3, "hits": []})
    assert "tilted <b>" not in html and "http" not in html.replace("http-equiv", "")
    data = json.loads(re.search(r"<script type='application/json' id='series-data'>(.*?)</script>", html, re.S).group(1))
    assert data["units"] == [[unit, "P1"]]
    assert data["checks"] == [["tilt", "warn", "tilted <b>"]]          # markup travels as text, escaped
    assert data["rows"] == [[0, "s001", "ct_axial", "CT", "warn", 0, [0], []]]
    s = status_summary(out)
    assert s["units_done"] == 0 and s["stage_failures"] == {"ncct": 1}
    assert s["failed_units"] == [{"unit": unit, "stages": ["ncct"]}]
    assert s["series_failures"] == {}


def test_status_counts_failed_rows_of_converter_manifests(tmp_path, capsys):
    """A stage that ran ("done") but could not convert a SEG (source series missing)
    shows up in `dicomprep status`, without changing its exit code."""
    from dicomprep.qc.status import status_command

    out, unit = tmp_path, "xnat/p/P1/S1"
    (out / "private" / "units" / unit).mkdir(parents=True)
    pd.DataFrame({"unit": [unit], "stages": ["seg;ncct"]}).to_csv(out / "private" / "units.csv", index=False)
    lay = layout(out)
    for stage in ("seg", "ncct"):
        lay.stage_dir(stage, unit).mkdir(parents=True)
    pd.DataFrame({"series_key": ["a", "b", "c"], "status": ["converted", "failed", "skipped"],
                  "reason": ["", "source series not found", "not selected"]}).to_parquet(lay.stage_manifest("seg", unit))
    pd.DataFrame({"series_key": ["d"], "status": ["converted"]}).to_parquet(lay.stage_manifest("ncct", unit))
    assert status_summary(out)["series_failures"] == {"seg": 1}
    assert status_command(out) == 0
    assert "1 series/segmentation(s) not converted by stage seg" in capsys.readouterr().out


def test_positions_check_knows_volumes_from_duplicates():
    dwi = pd.Series({"kind": "dwi", "Modality": "MR", "n_instances": 45, "n_frames": 45, "n_duplicates": 42,
                     "slice_spacing": 8.0, "spacing_regular": True, "orientation": "oblique"})
    found = {c.name: c for c in checks.geometry_checks(dwi)}
    assert found["positions"].status == "pass" and "3 slice positions × 15 volumes" in found["positions"].message
    ct = pd.Series({"kind": "ct_axial", "Modality": "CT", "n_instances": 41, "n_frames": 41, "n_duplicates": 1,
                    "slice_spacing": 1.0, "spacing_regular": True, "orientation": "axial"})
    assert {c.name: c for c in checks.geometry_checks(ct)}["positions"].status == "warn"


def test_picture_from_array_is_the_picture_from_the_file(tmp_path):
    """The unit's stages can hand the voxels they hold to the picture code: same bytes."""
    rng = np.random.default_rng(3)
    vol = rng.normal(100, 20, (40, 48, 12)).astype(np.float32)
    aff = np.diag([-1.5, 1.5, 3.0, 1.0])                         # LPS-like flip on x
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "v.nii.gz"))
    a = pictures.volume_picture(tmp_path / "v.nii.gz", tmp_path / "a.png")
    b = pictures.volume_picture_array(vol, aff, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    dwi = rng.normal(50, 5, (16, 16, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(dwi, np.eye(4)), str(tmp_path / "d.nii.gz"))
    c = pictures.diffusion_picture(tmp_path / "d.nii.gz", np.array([0, 1000, 1000]), tmp_path / "c.png")
    d = pictures.diffusion_picture_array(dwi, np.eye(4), [0, 1000, 1000], tmp_path / "d.png")
    assert c.read_bytes() == d.read_bytes()
    assert not Image.open(c).text


def test_picture_tiles_keep_the_physical_aspect_and_the_window(tmp_path):
    """64×64×16 voxels of 1×1×2 mm: the axial tile fills 160×160; coronal and sagittal
    planes are 32 mm × 64 mm, so 80 rows × 160 columns, centred. A CT brain window
    (40, 80) maps 40 HU to (40 − 0) / 79 × 255 = 129 (PS3.3 C.11.2.1.2.1, by hand)."""
    vol = np.full((64, 64, 16), 40, np.int16)
    png = pictures.volume_picture_array(vol, np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "p.png",
                                        windows=[pictures.CT_WINDOWS["brain"]])
    arr = np.asarray(Image.open(png))
    size, gap = pictures.THUMB_SIZE, 4
    assert arr.shape == (size, 3 * size + 2 * gap, 3)
    tiles = [arr[:, i * (size + gap): i * (size + gap) + size, 0] for i in range(3)]
    heights = [int((t > 0).any(axis=1).sum()) for t in tiles]
    widths = [int((t > 0).any(axis=0).sum()) for t in tiles]
    assert heights == [160, 80, 80] and widths == [160, 160, 160]
    assert (tiles[1] > 0).any(axis=1).nonzero()[0][0] == 40       # centred: rows 40..119
    assert set(np.unique(tiles[0])) == {129}


def test_outline_and_centre_equal_scipy_ndimage():
    """The pictures' mask outline and centre (numpy, so a QC job need not import
    scipy.ndimage) equal scipy's binary_erosion and center_of_mass, edges included."""
    import numpy as np
    from scipy import ndimage

    from dicomprep.qc.pictures import center_of_mass, outline

    rng = np.random.default_rng(7)
    for shape in ((1, 1), (1, 7), (5, 1), (2, 2), (17, 23), (64, 40)):
        for density in (0.2, 0.6, 0.95, 1.0):
            m = rng.random(shape) < density
            assert np.array_equal(outline(m), m & ~ndimage.binary_erosion(m)), (shape, density)
    for shape in ((9, 11, 5), (30, 2, 17)):
        m = rng.random(shape) < 0.3
        assert center_of_mass(m) == tuple(ndimage.center_of_mass(m)), shape
