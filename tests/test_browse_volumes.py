"""open_index(...): new_series, subseries, map_to, map_mask_to on real CT (issue 17, part 3)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import ROOT

import dicomprep
from dicomprep.browse import CohortIndex, Volume
from dicomprep.convert.seg import decode_segmentation

SECRET = b"test-secret-for-browse-volumes-0123"
CT3 = "dcmqi/segmentations/ct-3slice"


@pytest.fixture(scope="module")
def ct3(testdata, tmp_path_factory):
    """ct-3slice (3 real 512² CT slices) copied and indexed."""
    base = tmp_path_factory.mktemp("browse")
    shutil.copytree(testdata / CT3, base / "in" / "ct")
    proc = subprocess.run([sys.executable, "-m", "dicomprep", "index", base / "in", base / "out"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return base


def _dcm2niix(src: Path, out: Path) -> nib.Nifti1Image:
    from dicomprep.convert.dcm2niix import dcm2niix_binary

    out.mkdir()
    subprocess.run([dcm2niix_binary(), "-z", "n", "-f", "x", "-o", str(out), str(src)], capture_output=True,
                   timeout=300, check=True)
    return nib.load(str(next(out.glob("*.nii"))))


def test_map_to_a_flipped_grid_equals_dcm2niix(ct3, tmp_path):
    """dcm2niix stores the same CT with its rows flipped: mapping the series onto that grid
    (every target voxel centre is a source voxel centre) must give dcm2niix's voxels."""
    idx = dicomprep.open_index(ct3 / "out")
    ref = _dcm2niix(ct3 / "in" / "ct", tmp_path / "n")
    key = idx.series()["series_key"].iloc[0]
    mapped = idx.map_to(key, ref)
    assert mapped.shape == ref.shape and np.allclose(mapped.affine, ref.affine)
    assert np.array_equal(np.rint(mapped.data), ref.get_fdata())    # scaled by scl_slope/inter


def test_map_mask_to_a_coarser_grid_picks_every_other_voxel(testdata):
    """A grid with twice the spacing whose voxel (0,0,k) is the source voxel (0,0,k): nearest
    neighbour gives mask[::2, ::2, :] exactly (computed by hand)."""
    src = sorted((testdata / CT3).glob("*.dcm"))
    mask = decode_segmentation(testdata / "dcmqi/segmentations/liver.dcm", src)[0]
    aff = mask.affine.copy()
    aff[:3, :2] *= 2
    target = Volume(np.zeros((256, 256, 3), np.uint8), aff)
    idx = CohortIndex(None)
    out = idx.map_mask_to((mask.data, mask.affine), target)
    assert out.data.dtype == mask.data.dtype
    assert np.array_equal(out.data, mask.data[::2, ::2, :])
    # and back onto the source series' own grid (headers only): unchanged
    same = idx.map_mask_to((mask.data, mask.affine), src)
    assert np.array_equal(same.data, mask.data)


def test_subseries_splits_by_attribute_values(testdata, tmp_path):
    """Three slices given FlipAngle 5/5/30 and ImageType M/M/P by hand."""
    folder = tmp_path / "s"
    folder.mkdir()
    for n, (src, fa, kind) in enumerate(zip(sorted((testdata / CT3).glob("*.dcm")), (5, 5, 30), ("M", "M", "P"))):
        ds = pydicom.dcmread(src)
        ds.FlipAngle = fa
        ds.ImageType = ["ORIGINAL", "PRIMARY", kind]
        ds.save_as(folder / f"{n}.dcm")
    idx = CohortIndex(None)
    split = idx.subseries(folder, by="FlipAngle")
    assert {k: sorted(p.name for p in v) for k, v in split.items()} == {5.0: ["0.dcm", "1.dcm"], 30.0: ["2.dcm"]}
    assert [p.name for p in idx.subseries(folder, ImageType="P")] == ["2.dcm"]
    both = idx.subseries(folder, by=["ImageType", "FlipAngle"], FlipAngle={"max": 10})
    assert list(both) == [(("ORIGINAL", "PRIMARY", "M"), 5.0)]


def test_new_series_from_array_keeps_patient_study_and_world(ct3, tmp_path):
    """A derived series (HU + 100, float) on the template's grid: same patient and study,
    new keyed UIDs, and read back (idx.volume) equal within the rescale step."""
    idx = dicomprep.open_index(ct3 / "out")
    key = idx.series()["series_key"].iloc[0]
    vol = idx.volume(key)
    derived = vol.data.astype(np.float32) + 100.5
    res = idx.new_series(derived, vol.affine, key, tmp_path / "new", secret=SECRET, name="plus100")
    back = CohortIndex(None).volume(tmp_path / "new")
    assert np.allclose(back.affine, vol.affine, atol=1e-4)
    assert np.abs(back.data - derived).max() <= res.rescale_slope
    ds = pydicom.dcmread(res.paths[0])
    tpl = pydicom.dcmread(idx.series_paths(key)[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == tpl.StudyInstanceUID and ds.PatientID == tpl.PatientID
    from dicomprep.deid.pseudonym import uid_pseudonym
    assert res.series_uid == uid_pseudonym(SECRET, f"dicomprep-derived|series|{tpl.SeriesInstanceUID}|plus100")
