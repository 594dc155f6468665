"""Burned-in text in pixels (issue 13 item 1): a real CT slice with a name and an ID
burned in outside the body is found by OCR and redacted in the de-identified DICOM
(uncompressed and RLE-compressed input), the series is withheld in quarantine mode,
and clean real CT/MR slices raise no alarm."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomprep import dicomio, ocr
from dicomprep.deid import pixels
from dicomprep.deid.unit import deidentify_unit
from dicomprep.deid.dataset import make_deidentifier

SECRET = b"test-secret-0123456789abcdef-xyz"
NAME, ID = "DOE^JANE", "98765432"
DROP = {"max_instances": 0}


def _burn(src: Path, dst: Path, *, compress: str | None = None) -> tuple[np.ndarray, int]:
    """``src`` with NAME (top left) and ``ID`` (bottom right) drawn at the slice's
    maximum value outside the head, BurnedInAnnotation removed; returns the
    burned pixels and the air value around the text."""
    ds = pydicom.dcmread(src)
    a = ds.pixel_array.astype(np.int32)
    img = Image.fromarray(a, mode="I")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    draw.text((10, 8), NAME, fill=int(a.max()), font=font)
    draw.text((370, 490), f"ID {ID}", fill=int(a.max()), font=font)
    burned = np.array(img).astype(ds.pixel_array.dtype)
    assert (burned != ds.pixel_array).sum() > 100
    if "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    ds.PatientName = NAME
    ds.PatientID = ID
    ds.PixelData = burned.tobytes()
    if compress:
        ds.compress(compress, burned)
    ds.save_as(dst, enforce_file_format=True)
    return burned, int(a[0:4, 0:4].flat[0])


def _table(paths: list[Path], series_id: str = "s1") -> pd.DataFrame:
    rows = []
    for i, p in enumerate(paths, 1):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        rows.append({"path": str(p), "series_key": series_id, "series_id": series_id, "kind": "ct_axial",
                     "Modality": ds.Modality, "InstanceNumber": i, "SeriesInstanceUID": ds.SeriesInstanceUID})
    return pd.DataFrame(rows)


def _text(image: np.ndarray) -> str:
    return " ".join(b.text for b in ocr.read_text(image, min_score=0.3, min_chars=1))


@pytest.fixture(scope="module")
def ct_slice(testdata) -> Path:
    return testdata / "dcm_qa_ct" / "In" / "GE" / "10.dcm"


@pytest.mark.parametrize("compress", [None, RLELossless])
def test_burned_in_name_and_id_are_found_and_redacted(ct_slice, tmp_path, compress):
    src = tmp_path / "in" / "burned.dcm"
    src.parent.mkdir()
    burned, air = _burn(ct_slice, src, compress=compress)
    before = _text(burned)
    assert "DOE" in before and "JANE" in before and ID in before, before  # the OCR reads the planted text
    deid = make_deidentifier({"deid": {"burned_in_text": "redact"}}, SECRET)
    manifest, counts, _ = deidentify_unit(_table([src]), share_dir=tmp_path / "share", deid=deid, drop_cfg=DROP)
    row = manifest.iloc[0]
    assert row["status"] == "written"
    # (a) detected, and the boxes recorded
    found = json.loads(row["burned_in_text"])
    boxes = [b for f in found for b in f["boxes"]]
    assert len(boxes) >= 2, found
    assert counts["burned_in_text"]["instances_redacted"] == 1
    out = pydicom.dcmread(row["output_path"])
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # decoded, redacted, written plain
    assert "PatientName" not in out or NAME not in str(out.PatientName)
    pix = out.pixel_array
    # (b) no longer OCRs to the name or the ID, and the boxes hold the background only
    text = _text(pix).replace("^", "").replace(" ", "")
    assert "JANE" not in text and ID not in text, text
    for x0, y0, x1, y1 in boxes:
        assert np.all(pix[y0:y1, x0:x1] == air), (x0, y0, x1, y1)
    # the text pixels were all inside the boxes; the rest of the image is unchanged
    changed = burned != pix
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    assert not np.any(changed & ~inside)
    orig = pydicom.dcmread(ct_slice).pixel_array
    assert np.all(pix[inside] == air) and np.array_equal(pix[~inside], orig[~inside])


def test_text_over_the_air_inside_the_reconstruction_circle_is_redacted(testdata, tmp_path):
    """A CT whose outside of the reconstruction circle is padding (dcmqi's slices: -2000
    stored, air inside the circle -1024 HU): a line of text from the padded corner into
    the air inside the circle. The circle is not the body, so the whole line is read and
    redacted (only its part over the padding was, before)."""
    ds = pydicom.dcmread(sorted((testdata / "dcmqi" / "segmentations" / "ct-3slice").glob("*.dcm"))[0])
    a = ds.pixel_array.astype(np.int32)
    assert (a == a.min()).mean() > 0.1 and a[0, 0] == a.min() and a[40, 300] > a.min() + 1000  # padding, circle
    img = Image.fromarray(a, mode="I")
    font = ImageFont.load_default(size=26)
    ImageDraw.Draw(img).text((8, 6), f"{NAME.replace('^', ' ')} {ID} 03.12.1947", fill=int(a.max()), font=font)
    orig = ds.pixel_array.copy()
    burned = np.array(img).astype(orig.dtype)
    stroke = burned != orig
    assert np.argwhere(stroke)[:, 1].max() > 300  # the line reaches into the circle
    before = _text(burned)
    assert "JANE" in before and ID in before, before
    if "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    ds.PixelData = burned.tobytes()
    src = tmp_path / "in" / "burned.dcm"
    src.parent.mkdir()
    ds.save_as(src, enforce_file_format=True)
    deid = make_deidentifier({"deid": {"burned_in_text": "redact"}}, SECRET)
    manifest, counts, _ = deidentify_unit(_table([src]), share_dir=tmp_path / "share", deid=deid, drop_cfg=DROP)
    assert counts["burned_in_text"]["instances_redacted"] == 1
    pix = pydicom.dcmread(manifest.iloc[0]["output_path"]).pixel_array
    assert not np.any(pix[stroke] == a.max())  # no stroke left
    after = _text(pix).replace(" ", "")
    assert "JANE" not in after and "DOE" not in after and ID[-4:] not in after and "1947" not in after, after
    assert np.array_equal(pix[200:, :], orig[200:, :])  # the body is untouched


def test_verifier_reads_blosc_compressed_hdf5_by_itself(tmp_path):
    """share/'s HDF5 files are Blosc-compressed: the verifier's modules register the
    filter themselves (checked in a fresh interpreter, where nothing else did)."""
    import subprocess
    import sys

    import h5py
    import hdf5plugin

    path = tmp_path / "u1.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("s1").create_dataset("data", data=np.arange(64 * 64, dtype=np.int16).reshape(1, 64, 64),
                                             **hdf5plugin.Blosc())
    code = ("import sys; from pathlib import Path; from dicomprep.verify import pixels, scan_hdf5; "
            "frames = list(pixels._hdf5_frames(Path(sys.argv[1]), {'s1'})); "
            "assert len(frames) == 1 and int(frames[0][1].sum()) == sum(range(64 * 64)), frames")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_quarantine_mode_withholds_the_series(ct_slice, tmp_path):
    src = tmp_path / "in" / "burned.dcm"
    src.parent.mkdir()
    _burn(ct_slice, src)
    deid = make_deidentifier({"deid": {"burned_in_text": "quarantine"}}, SECRET)
    manifest, counts, _ = deidentify_unit(_table([src]), share_dir=tmp_path / "share", deid=deid, drop_cfg=DROP)
    row = manifest.iloc[0]
    assert row["status"] == "quarantined" and row["reason"].startswith("burned_in_text:")
    assert not list((tmp_path / "share").rglob("*.dcm"))
    assert counts["series_not_shared"] == {"quarantined:burned_in_text": 1}
    assert counts["burned_in_text"]["series_quarantined"] == 1


def test_off_leaves_pixels_alone(ct_slice, tmp_path):
    src = tmp_path / "burned.dcm"
    burned, _ = _burn(ct_slice, src)
    deid = make_deidentifier({"deid": {"burned_in_text": "off"}}, SECRET)
    manifest, counts, _ = deidentify_unit(_table([src]), share_dir=tmp_path / "share", deid=deid, drop_cfg=DROP)
    assert "burned_in_text" not in counts
    assert np.array_equal(pydicom.dcmread(manifest.iloc[0]["output_path"]).pixel_array, burned)


CLEAN = [  # real CT and MR series with no burned-in text
    ("dcm_qa_ct/In/GE", "*.dcm", 6),
    ("dcm_qa_ct/In/Philips/S21570/S2010", "*", 4),
    ("dcmqi/segmentations/ct-3slice", "*.dcm", 3),
    ("dcm_qa_nih/In/20180918GE/mr_0004", "*", 4),
    ("dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2", "*", 4),
    ("dcm_qa_ts/In", "*.dcm", 4),
    ("pydicom-data", "MR2_J2KR.dcm", 1),
]


def test_clean_real_slices_raise_no_alarm(testdata):
    settings = pixels.PixelSettings(mode="quarantine")
    screened = 0
    for folder, pattern, n in CLEAN:
        paths = [p for p in sorted((testdata / folder).glob(pattern)) if p.is_file() and p.name != "DIRFILE" and p.suffix != ".txt"]
        assert paths, folder
        for p in paths[:: max(1, len(paths) // n)][:n]:
            data = dicomio.read_bytes(p)
            out, found = pixels.screen_instance(data, settings)
            assert found == [], (p, found)
            assert out is data
            screened += 1
    assert settings.counts["instances_screened"] == screened >= 25
    assert settings.counts["instances_with_text"] == 0


# --------------------------------------------------------------------------- the verifier reads pixels

def _png(image: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(ocr.to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def _share_with_burned_text(ct_slice: Path, out: Path) -> np.ndarray:
    """An output folder whose share/ holds the burned slice as DICOM (header clean),
    a PNG, a report thumbnail, a NIfTI and an HDF5 series, and whose unit manifest
    says text was found at the source of series s1."""
    import base64

    import h5py
    import nibabel as nib

    src = out / "burned.dcm"
    out.mkdir(parents=True, exist_ok=True)
    burned, _ = _burn(ct_slice, src)
    ds = pydicom.dcmread(src)
    ds.PatientName, ds.PatientID = "ANONYMOUS", "P1"
    share = out / "share"
    (share / "dicom" / "u1" / "s1").mkdir(parents=True)
    ds.save_as(share / "dicom" / "u1" / "s1" / "0001.dcm", enforce_file_format=True)
    src.unlink()
    (share / "qc").mkdir()
    (share / "qc" / "s1.png").write_bytes(_png(burned))
    card = Image.new("L", (400, 120), 0)
    ImageDraw.Draw(card).text((20, 50), f"ID {ID}", fill=255, font=ImageFont.load_default(size=16))
    uri = base64.b64encode(_png(np.array(card))).decode()
    (share / "qc" / "report.html").write_text(f'<html><body><img src="data:image/png;base64,{uri}"></body></html>')
    (share / "nifti" / "u1").mkdir(parents=True)
    vol = np.ascontiguousarray(burned.T[::-1, ::-1])[:, :, None]  # RAS: display = vol[::-1, ::-1, k].T
    nib.save(nib.Nifti1Image(vol, np.eye(4)), share / "nifti" / "u1" / "s1.nii.gz")
    (share / "hdf5").mkdir()
    with h5py.File(share / "hdf5" / "u1.h5", "w") as h5:
        h5.create_group("s1").create_dataset("data", data=burned[None])
    (out / "private" / "stages" / "deid" / "u1").mkdir(parents=True)
    pd.DataFrame([{"path": "x", "series_key": "k", "series_id": "s1", "output_path": "", "status": "written",
                   "reason": "", "burned_in_text": '[{"frame":0,"boxes":[[8,8,90,30]]}]'}]
                 ).to_parquet(out / "private" / "stages" / "deid" / "u1" / "manifest.parquet")
    return burned


def _ids():
    from dicomprep.verify.identifiers import IdentifierSet

    ids = IdentifierSet()
    ids.add("name", NAME)
    ids.add("id", ID)
    return ids


def test_verifier_reads_text_in_pixels(ct_slice, tmp_path):
    from dicomprep.verify.share import verify_share

    out = tmp_path / "out"
    _share_with_burned_text(ct_slice, out)
    result = verify_share(out, ids=_ids(), config={"verify": {"ocr": {"max_images": 50}}})
    assert result["status"] == "fail"
    pixel_hits = {(h["file"], h["kind"]) for h in result["hits"] if "burned into the pixels" in h["where"]}
    assert {("dicom/u1/s1/0001.dcm", "name"), ("dicom/u1/s1/0001.dcm", "id"), ("qc/s1.png", "name"),
            ("qc/report.html", "id"), ("nifti/u1/s1.nii.gz", "name"), ("hdf5/u1.h5", "id")} <= pixel_hits, pixel_hits
    on_disk = json.loads((out / "share" / "verification.json").read_text())
    px = on_disk["pixels"]
    assert px["enabled"] and px["images_screened"] >= 5 and 5 <= px["images_ocr"] + px["images_ocr_reused"] <= 50
    # the DICOM frame, the NIfTI slice and the HDF5 frame hold the same pixels: read once (the two
    # repeats reuse the reading), and each of the three files is reported above
    assert px["images_ocr_reused"] == 2 and px["images_ocr"] >= 3
    assert px["images_over_budget"] == 0 and px["units_with_text_at_source"] == 1
    assert "seconds" not in px                       # share/ stays byte-identical: the time is private
    private = json.loads((out / "private" / "logs" / "verification.json").read_text())
    assert private["pixels"]["seconds"] >= 0
    # nothing of the text read is written out: only where it was
    assert "JANE" not in json.dumps(on_disk) and ID not in json.dumps(on_disk)


def test_verifier_pixel_scan_is_the_same_on_worker_processes(ct_slice, tmp_path, monkeypatch):
    """The text-likeness test runs on forked workers; which images are OCRed (the
    budget, in file order), the hits and the counts are those of one process."""
    from dicomprep.verify import pixels as verify_pixels
    from dicomprep.verify.share import verify_share

    out = tmp_path / "out"
    _share_with_burned_text(ct_slice, out)
    config = {"verify": {"ocr": {"max_images": 2}}}
    serial = verify_share(out, ids=_ids(), config=config, workers=1)
    monkeypatch.setattr(verify_pixels, "PARALLEL_FROM_FILES", 0)
    forked = verify_share(out, ids=_ids(), config=config, workers=2)
    assert forked["hits"] == serial["hits"] and any("burned into" in h["where"] for h in serial["hits"])
    drop = ("seconds",)
    assert {k: v for k, v in forked["pixels"].items() if k not in drop} == \
        {k: v for k, v in serial["pixels"].items() if k not in drop}
    assert serial["pixels"]["images_over_budget"] >= 1      # the budget decided something


def test_verifier_ocr_budget_and_clean_redacted_share(ct_slice, tmp_path):
    from dicomprep.verify.share import verify_share

    out = tmp_path / "out"
    _share_with_burned_text(ct_slice, out)
    result = verify_share(out, ids=_ids(), config={"verify": {"ocr": {"max_images": 1}}})
    px = result["pixels"]   # the slice in DICOM, NIfTI and HDF5 is one reading: not over the budget twice
    assert px["images_ocr"] == 1 and px["images_over_budget"] >= 2 and px["images_ocr_reused"] == 2
    # the de-identified (redacted) slice passes the pixel scan
    src = tmp_path / "in" / "burned.dcm"
    src.parent.mkdir()
    _burn(ct_slice, src)
    clean = tmp_path / "clean"
    deid = make_deidentifier({"deid": {"burned_in_text": "redact"}}, SECRET)
    deidentify_unit(_table([src]), share_dir=clean / "share" / "dicom" / "u1", deid=deid, drop_cfg=DROP)
    result = verify_share(clean, ids=_ids())
    assert result["status"] == "pass", result["hits"]
    assert result["pixels"]["images_screened"] == 1


@pytest.mark.parametrize("name", ["dcm_qa_ts/In/2.dcm", "dcm_qa_ts/In/3.dcm", "dcm_qa_ts/In/4.dcm",
                                  "dcm_qa_ts/In/5.dcm", "dcm_qa_ts/In/7.dcm", "dcm_qa_ts/In/9.dcm",
                                  "pydicom-data/693_J2KR.dcm", "pydicom-data/emri_small_big_endian.dcm",
                                  "pydicom-data/MR2_J2KI.dcm", "pydicom-data/emri_small_jpeg_ls_lossless.dcm"])
def test_redaction_rewrites_every_transfer_syntax(testdata, name):
    """Redacted pixels are written uncompressed little endian, whatever the source's
    transfer syntax (implicit, big endian, deflated, RLE, JPEG lossless, JPEG-LS,
    JPEG 2000 lossless and lossy), and read back as the redacted array."""
    import io

    ds = pydicom.dcmread(testdata / name)
    arr = np.array(ds.pixel_array, copy=True)
    frame = arr if arr.ndim == 2 else arr[0]
    filled = pixels.redact_frame(frame, [ocr.TextBox(4, 4, 20, 12, "x", 1.0)])
    x0, y0, x1, y1 = filled[0]
    sop, rows = ds.SOPInstanceUID, ds.Rows
    back = pydicom.dcmread(io.BytesIO(pixels._encode_redacted(ds, arr)))
    ts = back.file_meta.TransferSyntaxUID
    assert ts.is_little_endian and not ts.is_compressed and not ts.is_deflated, ts
    assert back.SOPInstanceUID == sop and back.Rows == rows
    assert np.array_equal(back.pixel_array, arr)
    got = back.pixel_array if back.pixel_array.ndim == 2 else back.pixel_array[0]
    assert np.unique(got[y0:y1, x0:x1]).size == 1


@pytest.mark.parametrize("image_type,sop,whole", [
    (["DERIVED", "SECONDARY", "AXIAL"], "1.2.840.10008.5.1.4.1.1.2", False),   # a reformat / derived CT volume
    (["ORIGINAL", "PRIMARY", "AXIAL"], "1.2.840.10008.5.1.4.1.1.2", False),
    (["DERIVED", "SECONDARY", "SCREEN SAVE"], "1.2.840.10008.5.1.4.1.1.2", True),  # a vendor screen capture
    (["DERIVED", "SECONDARY", "OTHER"], "1.2.840.10008.5.1.4.1.1.7", True),         # Secondary Capture storage
])
def test_whole_frame_ocr_for_screen_captures_not_for_secondary_images(image_type, sop, whole):
    """ImageType Value 2 "SECONDARY" (PS3.3 C.7.6.1.1.2) marks any image made after
    the examination (reformats, derived volumes): screened by region, not OCRed whole."""
    from pydicom.dataset import Dataset

    from dicomprep.deid.pixels import whole_frame

    ds = Dataset()
    ds.Modality, ds.ImageType, ds.SOPClassUID = "CT", image_type, sop
    assert whole_frame(ds) is whole


def test_an_image_that_cannot_be_screened_is_not_shared(ct_slice, tmp_path):
    """Pixels no installed decoder reads (here H.264 video frames, as ultrasound and
    endoscopy export) cannot be screened for burned-in text: the image is quarantined
    with the reason, like an image with text, and the rest of the series is shared.
    With deid.burned_in_text: off it is written unscreened."""
    from pydicom.encaps import encapsulate

    good = tmp_path / "in" / "good.dcm"
    good.parent.mkdir()
    video = tmp_path / "in" / "video.dcm"
    ds = pydicom.dcmread(ct_slice)
    ds.save_as(good, enforce_file_format=True)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"   # MPEG-4 AVC/H.264 High Profile
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(range(200)) * 3])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.InstanceNumber = 99
    ds.save_as(video, enforce_file_format=True)
    deid = make_deidentifier({"deid": {}}, SECRET)
    manifest, counts, _ = deidentify_unit(_table([good, video]), share_dir=tmp_path / "share", deid=deid, drop_cfg=DROP)
    by_path = manifest.set_index("path")
    row = by_path.loc[str(video)]
    assert row["status"] == "quarantined" and row["reason"].startswith("pixels_not_screened:"), row["reason"]
    assert "H.264" in row["reason"] or "MPEG-4" in row["reason"]
    assert by_path.loc[str(good), "status"] == "written"
    assert counts["files_quarantined"] == {"pixels_not_screened": 1}
    assert len(list((tmp_path / "share").rglob("*.dcm"))) == 1
    off = make_deidentifier({"deid": {"burned_in_text": "off"}}, SECRET)
    manifest, _, _ = deidentify_unit(_table([good, video]), share_dir=tmp_path / "off", deid=off, drop_cfg=DROP)
    assert set(manifest["status"]) == {"written"}
