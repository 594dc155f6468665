"""Proof that the private allowlist is enough: dcm2niix on the de-identified copy gives
the same voxels, affine, bval and bvec as on the original, for every vendor in the shared
data that has a dcm2niix reference (GE, Siemens mosaic/XA classic/XA enhanced, Philips
classic DWI and enhanced, all transfer syntaxes). bval/bvec are also checked against the
upstream references in ``Ref/``.
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dicomprep import dicomio
from dicomprep.deid.unit import deidentify_unit
from dicomprep.deid.dataset import make_deidentifier

ROOT = Path(__file__).resolve().parents[1]
DCM2NIIX = ROOT / ".venv" / "bin" / "dcm2niix"
SECRET = b"dcm2niix-proof-secret-0123456789"
#: Acquisition parameters dcm2niix reads (often from private attributes) that must survive.
SIDECAR_KEYS = ("SliceTiming", "PhaseEncodingDirection", "PhaseEncodingAxis", "EchoTime", "RepetitionTime",
                "EffectiveEchoSpacing", "TotalReadoutTime", "MultibandAccelerationFactor", "ImageType",
                "EchoNumber", "DiffusionScheme", "ParallelReductionFactorInPlane", "FlipAngle")


def _dcm2niix(src: Path, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    exe = str(DCM2NIIX) if DCM2NIIX.exists() else shutil.which("dcm2niix")
    subprocess.run([exe, "-z", "n", "-b", "y", "-f", "%s_%e", "-o", str(out), str(src)],
                   check=True, capture_output=True, text=True)
    return {p.name: p for p in out.iterdir()}


def _table(files: list[Path]) -> pd.DataFrame:
    rows = []
    for p in files:
        try:
            ds = dicomio.read_dataset(p, stop_before_pixels=True)
        except Exception:
            continue  # DICOMDIR, clutter
        key = f"{ds.get('SeriesInstanceUID')}|{ds.get('SeriesNumber')}"
        rows.append({"path": str(p), "series_key": key, "series_id": f"s{ds.get('SeriesNumber', 0)}",
                     "kind": "mr", "InstanceNumber": ds.get("InstanceNumber"),
                     "AcquisitionNumber": ds.get("AcquisitionNumber")})
    return pd.DataFrame(rows)


def _compare(folder: Path, tmp: Path, files: list[Path]) -> dict[str, Path]:
    table = _table(files)
    orig = tmp / "orig"
    orig.mkdir()
    for i, p in enumerate(table["path"]):
        (orig / f"{i:05d}.dcm").write_bytes(dicomio.read_bytes(p))  # un-gzipped copy for dcm2niix
    manifest, _, _ = deidentify_unit(table, share_dir=tmp / "share", deid=make_deidentifier({"deid": {}}, SECRET),
                                     drop_cfg={"max_instances": 0})
    assert (manifest["status"] == "written").all(), manifest[manifest["status"] != "written"]
    a = _dcm2niix(orig, tmp / "nii_orig")
    b = _dcm2niix(tmp / "share", tmp / "nii_deid")
    niis = sorted(k for k in a if k.endswith(".nii"))
    assert niis and niis == sorted(k for k in b if k.endswith(".nii")), (sorted(a), sorted(b))
    for name in niis:
        ia, ib = nib.load(a[name]), nib.load(b[name])
        assert np.array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj)), name
        np.testing.assert_allclose(ia.affine, ib.affine, atol=1e-5, err_msg=name)
        ja, jb = json.loads(a[name[:-4] + ".json"].read_text()), json.loads(b[name[:-4] + ".json"].read_text())
        for key in SIDECAR_KEYS:
            assert ja.get(key) == jb.get(key), f"{name}: sidecar {key} {ja.get(key)} != {jb.get(key)}"
        for ext in (".bval", ".bvec"):
            fa, fb = a.get(name[:-4] + ext), b.get(name[:-4] + ext)
            assert (fa is None) == (fb is None), f"{name}{ext} written for one side only"
            if fa is not None:
                np.testing.assert_allclose(np.loadtxt(fa), np.loadtxt(fb), atol=1e-6, err_msg=name + ext)
    return b


def _ref(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return np.loadtxt(data.decode().splitlines())


def _dicoms(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "DICOMDIR"
                  and p.suffix.lower() not in (".txt", ".json") and "LICENSE" not in p.name)


@pytest.fixture
def dcm2niix_available():
    if not (DCM2NIIX.exists() or shutil.which("dcm2niix")):
        pytest.skip("dcm2niix is not installed (.venv/bin/dcm2niix)")


def test_ge_dwi(testdata, tmp_path, dcm2niix_available):
    out = _compare(testdata / "dcm_qa_ge", tmp_path, _dicoms(testdata / "dcm_qa_ge" / "In"))
    ref = testdata / "dcm_qa_ge" / "Ref"
    for series, refname in (("1", "Ax_DWI_TENSOR_R2_1"), ("2", "Ax_DWI_TENSOR_R3_2")):
        name = next(k[:-4] for k in out if k.startswith(f"{series}_") and k.endswith(".nii"))
        np.testing.assert_allclose(_ref(out[f"{name}.bval"]), _ref(ref / f"{refname}.bval"))
        np.testing.assert_allclose(_ref(out[f"{name}.bvec"]), _ref(ref / f"{refname}.bvec"), atol=1e-4)
        ref_img = nib.load(ref / f"{refname}.nii")
        np.testing.assert_array_equal(np.asarray(nib.load(out[f"{name}.nii"]).dataobj), np.asarray(ref_img.dataobj))


def test_philips_dwi(testdata, tmp_path, dcm2niix_available):
    out = _compare(testdata / "dcm_qa_philips_dwi", tmp_path, _dicoms(testdata / "dcm_qa_philips_dwi" / "In"))
    ref = testdata / "dcm_qa_philips_dwi" / "Ref" / "701_DTI_Biobank_2mm_MB3S2_EPI_cl"
    bval = [k for k in out if k.endswith(".bval")]
    assert len(bval) == 1
    np.testing.assert_allclose(_ref(out[bval[0]]), _ref(Path(str(ref) + ".bval")), atol=1e-3)
    np.testing.assert_allclose(_ref(out[bval[0][:-5] + ".bvec"]), _ref(Path(str(ref) + ".bvec")), atol=1e-4)


def test_siemens_xa30_classic_dwi(testdata, tmp_path, dcm2niix_available):
    out = _compare(testdata / "dcm_qa_xa30i", tmp_path, _dicoms(testdata / "dcm_qa_xa30i" / "In"))
    ref = testdata / "dcm_qa_xa30i" / "Ref"
    bval = [k for k in out if k.endswith(".bval")]
    assert len(bval) == 1
    np.testing.assert_allclose(_ref(out[bval[0]]), _ref(ref / "11001_DWI_dir80_AP.bval.gz"))
    np.testing.assert_allclose(_ref(out[bval[0][:-5] + ".bvec"]), _ref(ref / "11001_DWI_dir80_AP.bvec.gz"), atol=1e-4)
    ref_img = nib.load(ref / "11001_DWI_dir80_AP.nii.gz")
    ours = nib.load(out[bval[0][:-5] + ".nii"])
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref_img.dataobj))
    np.testing.assert_allclose(ours.affine, ref_img.affine, atol=1e-3)


def test_siemens_mosaic_and_ge_fmri(testdata, tmp_path, dcm2niix_available):
    nih = testdata / "dcm_qa_nih" / "In"
    # separately: both vendors' series carry SeriesNumber 4, and dcm2niix names by series number
    (tmp_path / "si").mkdir()
    (tmp_path / "ge").mkdir()
    _compare(testdata / "dcm_qa_nih", tmp_path / "si", _dicoms(nih / "20180918Si"))
    _compare(testdata / "dcm_qa_nih", tmp_path / "ge", _dicoms(nih / "20180918GE" / "mr_0004"))


def test_transfer_syntaxes(testdata, tmp_path, dcm2niix_available):
    _compare(testdata / "dcm_qa_ts", tmp_path, _dicoms(testdata / "dcm_qa_ts" / "In"))


def test_enhanced_philips_and_siemens(testdata, tmp_path, dcm2niix_available):
    out = _compare(testdata / "dcm_qa_enh", tmp_path, _dicoms(testdata / "dcm_qa_enh" / "In"))
    assert any("fieldmaphz" in k for k in out)  # Philips private image type (2005,1011) survived
