"""Issue 13 items 4 and 5: identifiers in every spelling and character set, and dates in kept
private elements, are cleaned by the engine and found by the verifier.

Real files (dcm_qa_nih Siemens with CSA headers, dcm_qa_xa30i Siemens XA with the
MrPhoenixProtocol (0021,1019)) get planted values; the engine's output must hold none
of them in any spelling, and the verifier must find each spelling planted in share/.
"""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomprep import dicomio
from dicomprep.verify.identifiers import IdentifierSet, header_identifiers
from dicomprep.verify.matcher import Matcher
from dicomprep.verify.scan_dicom import scan_dicom
from dicomprep.verify.share import scanner_for
from dicomprep.deid.instance import deidentify_bytes
from dicomprep.deid.dataset import make_deidentifier
from dicomprep.deid.profile import default_allowlist_path

SECRET = b"test-secret-0123456789abcdef-xyz"

#: (planted spelling, what it spells) for PatientName SMITH^JÜRGEN, PatientID 12345678, StudyDate 20190314
NAME_SPELLINGS = ["Smith, Jurgen", "SMITH^JÜRGEN", "J. Smith", "Jürgen Smith", "jurgen smith"]
DATE_SPELLINGS = ["03/14/2019", "14.03.2019", "14 Mar 2019", "2019-03-14", "20190314", "Mar 14, 2019"]
ID_SPELLINGS = ["123-45-678", "12345678", "1234-5678"]


def _overwrite(blob: bytes, key: bytes, text: bytes) -> bytes:
    """Overwrite the value after ``key = ""`` in an ASCCONV/XProtocol text, same length."""
    start = blob.index(b"\n" + key + b'\t = \t""', blob.index(b"### ASCCONV BEGIN"))
    start = blob.index(b'""', start) + 2
    end = blob.index(b'""', start)
    assert len(text) <= end - start, (key, end - start)
    return blob[:start] + text.ljust(end - start) + blob[end:]


def _siemens_planted(testdata: Path) -> bytes:
    src = sorted((testdata / "dcm_qa_nih" / "In" / "20180918Si" / "mr_0003").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "SMITH^JÜRGEN"
    ds.PatientID = "12345678"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20190314"
    blob = ds[0x00291020].value
    blob = _overwrite(blob, b"tdefaultEVAProt", "Jürgen Smith 14 Mar 2019 1234-5678".encode("latin-1"))
    blob = _overwrite(blob, b"tSequenceFileName", b"smith, jurgen 03/14/2019")
    blob = _overwrite(blob, b"tProtocolName", b"J. Smith")
    blob = _overwrite(blob, b"sProtConsistencyInfo.tBaselineString", b"123-45-678 Mar 14, 2019")
    blob = _overwrite(blob, b"tReferenceImage2", b"2019-03-14 14.03.2019 20190314 12345678")
    ds[0x00291020].value = blob
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("fast", [True, False])
def test_csa_blob_is_scrubbed_of_every_spelling(testdata, fast):
    data = _siemens_planted(testdata)
    deid = make_deidentifier({"deid": {}}, SECRET)
    deid.fast_path = fast
    out, _ = deidentify_bytes(deid, data)
    ds = pydicom.dcmread(io.BytesIO(out))
    blob = ds[0x00291020].value
    assert len(blob) == len(pydicom.dcmread(io.BytesIO(data))[0x00291020].value)  # structure kept
    low = out.lower()
    for spelling in NAME_SPELLINGS + DATE_SPELLINGS + ID_SPELLINGS:
        for enc in ("latin-1", "utf-8"):
            assert spelling.lower().encode(enc) not in low, (spelling, fast)
    assert b"ASCCONV BEGIN" in blob and b"tProtocolName" in blob  # the field names dcm2niix reads stay


def test_both_paths_agree_on_the_planted_blob(testdata):
    data = _siemens_planted(testdata)
    outs = []
    for fast in (True, False):
        deid = make_deidentifier({"deid": {}}, SECRET)
        deid.fast_path = fast
        outs.append(deidentify_bytes(deid, data)[0])
    assert outs[0] == outs[1]


def _two_slices_one_blob(testdata: Path) -> list[bytes]:
    """Two files of a series, each with its own Acquisition/Content Time, whose kept CSA
    series header (0029,1020) holds both times (HH:MM:SS and bare digits)."""
    srcs = sorted((testdata / "dcm_qa_nih" / "In" / "20180918Si" / "mr_0003").glob("*.dcm"))[:2]
    out = []
    for src, time in zip(srcs, ("101112", "131415")):
        ds = pydicom.dcmread(src)
        ds.AcquisitionTime = ds.ContentTime = time
        blob = _overwrite(ds[0x00291020].value, b"tSequenceFileName", b"10:11:12 and 13:14:15")
        ds[0x00291020].value = _overwrite(blob, b"tdefaultEVAProt", b"101112 131415")
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("fast", [True, False])
def test_each_slice_scrubs_its_own_times_from_a_shared_blob(testdata, fast):
    """The series' identifiers are matched once per blob and remembered; a slice's own
    times are looked for in every slice (a memo keyed on the series alone would keep
    the second slice's time)."""
    deid = make_deidentifier({"deid": {}}, SECRET)
    deid.fast_path = fast
    for data, (own, other) in zip(_two_slices_one_blob(testdata), (("10:11:12", "13:14:15"), ("13:14:15", "10:11:12"))):
        blob = pydicom.dcmread(io.BytesIO(deidentify_bytes(deid, data)[0]))[0x00291020].value
        assert own.encode() not in blob and own.replace(":", "").encode() not in blob, (own, fast)
        assert other.encode() in blob and other.replace(":", "").encode() in blob, (other, fast)


def _xa_file(testdata: Path) -> Dataset:
    src = sorted((testdata / "dcm_qa_xa30i" / "In").rglob("*.dcm.gz"))[0]
    return pydicom.dcmread(io.BytesIO(dicomio.read_bytes(src)))


def test_dates_in_kept_private_elements_are_shifted_or_removed(testdata, tmp_path):
    ds = _xa_file(testdata)
    acq = str(ds.AcquisitionDate)  # 20230113, acquired 19:43:30
    y, m, d = acq[:4], acq[4:6], acq[6:]
    phoenix = ds[0x00211019].value  # SIEMENS MR SDS 01 MrPhoenixProtocol, allowlisted
    phoenix = _overwrite(phoenix, b"tdefaultEVAProt", f"{y}-{m}-{d} 19:43:30".encode())
    phoenix = _overwrite(phoenix, b"tSequenceFileName", f"{acq}194330.342500".encode())
    phoenix = _overwrite(phoenix, b"tProtocolName", f"{d}.{m}.{y}".encode())
    ds[0x00211019].value = phoenix
    # kept private elements with a date VR, and text that is a date as a whole
    block = ds.private_block(0x0011, "PLANT DATES", create=True)
    block.add_new(0x01, "DT", f"{acq}194330.342500")
    block.add_new(0x02, "DA", acq)
    block.add_new(0x03, "TM", "194330.342500")
    block.add_new(0x04, "LO", f"{acq}194316.952409")
    block.add_new(0x05, "LO", f"{d}.{m}.{y}")
    block.add_new(0x06, "DA", "***")
    allow = tmp_path / "allow.csv"
    allow.write_text(default_allowlist_path().read_text() + "\n" + "\n".join(
        f"PLANT DATES,0011,{e:02X},planted,test" for e in range(1, 7)) + "\n")
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    outs = []
    for fast in (True, False):
        deid = make_deidentifier({"deid": {"private_allowlist": str(allow)}}, SECRET)
        deid.fast_path = fast
        out, info = deidentify_bytes(deid, data)
        outs.append(out)
        low = out.lower()
        for spelling in (acq, f"{y}-{m}-{d}", f"{d}.{m}.{y}", "19:43:30", "194330", "194316"):
            assert spelling.encode() not in low, (spelling, fast)
        res = pydicom.dcmread(io.BytesIO(out))
        days = info["patient"].days
        shifted = res[0x00111002].value
        import datetime as dt

        assert shifted == (dt.date(int(y), int(m), int(d)) + dt.timedelta(days=days)).strftime("%Y%m%d")
        assert len(str(res[0x00111001].value)) == len(f"{acq}194330.342500")  # shifted, same precision
        assert res[0x00111005].value in (None, "", b"")  # a date with separators: removed
        assert any("is not a valid DA" in n for n in deid.notes)
        assert deid.counts["private_dates_shifted"] >= 4
    assert outs[0] == outs[1]
    # the verifier, told every identifier of the input, finds nothing left
    ids = IdentifierSet()
    ids.update(header_identifiers(ds))
    ids.add("equipment", "SIEMENS")
    hits = []
    path = tmp_path / "out.dcm"
    path.write_bytes(outs[0])
    scan_dicom(path, Matcher(ids), lambda where, kinds: hits.append((where, kinds)))
    assert not [h for h in hits if h[1] & {"date", "time"}], hits


def test_verifier_knows_every_spelling():
    ids = IdentifierSet()
    ids.add("name", "SMITH^JÜRGEN")
    ids.add("id", "12345678")
    ids.add("date", "20190314")
    m = Matcher(ids)
    for spelling in NAME_SPELLINGS + DATE_SPELLINGS + ["123-45-678", "1234/5678", "1234_5678"]:
        for enc in ("utf-8", "latin-1"):
            assert m.kinds(f"report: {spelling} seen".encode(enc)), (spelling, enc)
    assert m.kinds("bvec 0.123 45678 0.1234") == set()  # numbers in text are no ID
    assert m.kinds("folder 123-45-679") == set()
    redacted = m.redact("sub-123-45-678_run-1")
    assert "123" not in redacted


@pytest.mark.parametrize("charset, name, fragment", [
    ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう", "山田"),
    ("ISO_IR 126", "Διονυσιος^Νικος", "Διονυσιος"),
    ("ISO_IR 192", "Wang^XiaoDong=王^小東", "王^小東"),
    ("ISO_IR 100", "Buc^Jérôme", "Jérôme"),
])
def test_names_are_searched_in_each_declared_character_set(testdata, tmp_path, charset, name, fragment):
    """A real file rewritten with the charset and the name; share/ holds the name's bytes
    as that charset encodes them (pydicom's encoder, with ISO 2022 escape sequences)."""
    from pydicom.charset import convert_encodings, encode_string

    src = sorted((testdata / "dcm_qa_nih" / "In" / "20180918Si" / "mr_0003").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    path = tmp_path / "in.dcm"
    ds.save_as(path)
    ids = IdentifierSet()
    ids.update(header_identifiers(pydicom.dcmread(path, stop_before_pixels=True)))
    assert charset in ids.charsets
    m = Matcher(ids)
    encoded = encode_string(fragment, convert_encodings(charset.split("\\")))
    share = tmp_path / "notes.txt"
    share.write_bytes(b"comment: " + encoded + b" end\n")
    hits = []
    scanner_for(share)(share, m, lambda where, kinds: hits.append(kinds))
    assert any("name" in k for k in hits), (charset, encoded)


def test_audit_names_the_source_of_each_kept_private_entry(testdata, tmp_path):
    import pandas as pd

    from dicomprep.deid.audit import build_audit
    from dicomprep.deid.unit import deidentify_unit

    files = sorted((testdata / "dcm_qa_nih" / "In" / "20180918Si" / "mr_0003").glob("*.dcm"))
    instances = pd.DataFrame({"path": [str(f) for f in files], "series_key": "k", "series_id": "s003",
                              "kind": "mr", "ImageType": "ORIGINAL\\PRIMARY\\M\\MOSAIC"})
    deid = make_deidentifier({"deid": {}}, SECRET)
    _, counts, _ = deidentify_unit(instances, share_dir=tmp_path, deid=deid, drop_cfg={"max_instances": 0})
    kept = {e["entry"]: e for e in build_audit({"deid": {}}, [counts], secret=SECRET, n_units=1)
            ["private_allowlist"]["kept"]}
    csa = kept["SIEMENS CSA HEADER (0029,xx10)"]
    assert csa["source"].startswith("dcm2niix nii_dicom.cpp") and csa["elements"] == len(files)
    assert all(e["source"] and e["source"] != "unknown" for e in kept.values())


@pytest.mark.parametrize("fast", [True, False])
def test_address_telephone_email_and_short_kept_values_are_cleaned(testdata, fast):
    """A probe's leaks: the patient's address and telephone number inside the CSA
    series header, an e-mail address there, and the patient ID as a short kept
    private value (SIEMENS MR HEADER (0051,100E), normally 'Tra'); a number of the
    address alone ('Room 9200', a value the CSA header holds 31 times) is not wiped."""
    src = sorted((testdata / "dcm_qa_nih" / "In" / "20180918Si" / "mr_0003").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.PatientName, ds.PatientID = "QUIXOTE^ZEBULON", "ZQ99887766"
    ds.PatientAddress = "Calle Rocinante 17, Room 9200, La Mancha"
    ds.PatientTelephoneNumbers = "+41 44 555 01 23"
    blob = ds[0x00291020].value
    numbers_before = blob.count(b"9200")
    blob = _overwrite(blob, b"tdefaultEVAProt", b"Calle Rocinante 17 tel +41 44 555 01 23")
    blob = _overwrite(blob, b"tSequenceFileName", b"dr.who@clinic-example.org")
    ds[0x00291020].value = blob
    ds[0x0051100E].value = "ZQ99887766"
    buf = io.BytesIO()
    ds.save_as(buf)
    deid = make_deidentifier({"deid": {}}, SECRET)
    deid.fast_path = fast
    out, _ = deidentify_bytes(deid, buf.getvalue())
    result = pydicom.dcmread(io.BytesIO(out))
    low = out.lower()
    for planted in (b"rocinante", b"la mancha", b"555 01 23", b"44 555", b"dr.who", b"clinic-example", b"zq99887766",
                    b"quixote"):
        assert planted not in low, (planted, fast)
    new_blob = result[0x00291020].value
    assert len(new_blob) == len(blob) and new_blob.count(b"9200") == numbers_before  # numbers of the CSA kept
    assert result[0x0051100E].value.strip("X ") == "" and len(result[0x0051100E].value) == 10
