"""Issue 13 item 3: documents and structured reports.

Encapsulated PDF/CDA, SR (any SOP class), Key Object Selection and presentation
states carrying text are not shared by default, whatever their series size;
``deid.structured_reports: clean`` cleans SR content trees (names, dates, IDs,
free text, UIDs at any depth; observers and organisations) and shares them.
The SR is built on the header of a real CT file (dcmqi ct-3slice).
"""
from __future__ import annotations

import io

import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from dicomprep.deid.dataset import make_deidentifier
from dicomprep.deid.instance import deidentify_bytes
from dicomprep.deid.unit import deidentify_unit, series_filter_reasons

SECRET = b"test-secret-0123456789abcdef-xyz"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
PLANTED = ["Srplantname", "Observerplant", "Authorplant", "Participantplant", "Orgplantclinic",
           "SRTEXTPLANT", "IDPLANT-77", "19990417", "134501", "1.2.3.19990417.55.1", "Flagplantdesc"]


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _code(value: str, meaning: str) -> Sequence:
    return Sequence([_item(CodeValue=value, CodingSchemeDesignator="DCM", CodeMeaning=meaning)])


def make_sr(ct_path, sop_class=COMPREHENSIVE_SR) -> bytes:
    ct = pydicom.dcmread(ct_path, stop_before_pixels=True)
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID", "Manufacturer"):
        if kw in ct:
            setattr(ds, kw, ct.data_element(kw).value)
    ds.PatientName = "Srplantname^Anna"
    ds.SOPClassUID, ds.Modality = sop_class, ("KO" if sop_class == KOS else "SR")
    ds.SOPInstanceUID = "1.2.3.19990417.55.2"
    ds.SeriesInstanceUID = "1.2.3.19990417.55.3"
    ds.SeriesNumber, ds.InstanceNumber = 99, 1
    ds.ContentDate, ds.ContentTime = "19990417", "134501"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _code("126000", "Imaging Measurement Report")
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    ds.CompletionFlagDescription = "Flagplantdesc"
    ds.VerifyingObserverSequence = Sequence([_item(
        VerifyingObserverName="Observerplant^Olga", VerifyingOrganization="Orgplantclinic",
        VerificationDateTime="19990417134501",
        VerifyingObserverIdentificationCodeSequence=_code("IDPLANT-77", "Observerplant"))])
    ds.AuthorObserverSequence = Sequence([_item(ObserverType="PSN", PersonName="Authorplant^Al",
                                                InstitutionName="Orgplantclinic")])
    ds.ParticipantSequence = Sequence([_item(ParticipationType="ENT", ObserverType="PSN",
                                             PersonName="Participantplant^Pat",
                                             ParticipationDateTime="19990417134501")])
    deep = [
        _item(RelationshipType="CONTAINS", ValueType="TEXT", ConceptNameCodeSequence=_code("121071", "Finding"),
              TextValue="SRTEXTPLANT seen by Srplantname on 14.03.2019"),
        _item(RelationshipType="HAS OBS CONTEXT", ValueType="PNAME",
              ConceptNameCodeSequence=_code("121008", "Person Observer Name"), PersonName="Observerplant^Olga"),
        _item(RelationshipType="CONTAINS", ValueType="DATE", ConceptNameCodeSequence=_code("111060", "Study Date"),
              Date="19990417"),
        _item(RelationshipType="CONTAINS", ValueType="DATETIME", ConceptNameCodeSequence=_code("111526", "DateTime"),
              DateTime="19990417134501"),
        _item(RelationshipType="CONTAINS", ValueType="TIME", ConceptNameCodeSequence=_code("111061", "Time"),
              Time="134501"),
        _item(RelationshipType="CONTAINS", ValueType="UIDREF", ConceptNameCodeSequence=_code("112002", "Series"),
              UID="1.2.3.19990417.55.1"),
        _item(RelationshipType="CONTAINS", ValueType="TEXT", ConceptNameCodeSequence=_code("121106", "Comment"),
              TextValue="IDPLANT-77 Participantplant"),
    ]
    middle = _item(RelationshipType="CONTAINS", ValueType="CONTAINER",
                   ConceptNameCodeSequence=_code("126010", "Imaging Measurements"), ContinuityOfContent="SEPARATE",
                   ContentSequence=Sequence(deep))  # depth 2
    ds.ContentSequence = Sequence([middle])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture()
def ct_file(testdata):
    return sorted((testdata / "dcmqi" / "segmentations" / "ct-3slice").glob("*.dcm"))[0]


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame([{"path": "", "series_key": k, "series_id": k, "kind": kind, "Modality": mod,
                          "SOPClassUID": sop, "BurnedInAnnotation": "NO"} for k, kind, mod, sop, n in rows
                         for _ in range(n)])


def test_documents_and_reports_are_not_shared_whatever_their_size():
    rows = [("pdf", "other", "DOC", PDF, 40), ("cda", "other", "DOC", "1.2.840.10008.5.1.4.1.1.104.2", 1),
            ("sr", "structured_report", "SR", COMPREHENSIVE_SR, 30), ("kos", "other", "KO", KOS, 12),
            ("enhsr", "structured_report", "SR", "1.2.840.10008.5.1.4.1.1.88.22", 50),
            ("img", "mr", "MR", "1.2.840.10008.5.1.4.1.1.4", 30)]
    table = _table(rows)
    drop = series_filter_reasons(table, {})
    assert drop["pdf"][1].startswith("document:") and drop["cda"][1].startswith("document:")
    for key in ("sr", "kos", "enhsr"):
        assert drop[key][0] == "dropped" and drop[key][1].startswith("structured_report:")
        assert "deid.structured_reports: clean" in drop[key][1]
    assert "img" not in drop
    clean = series_filter_reasons(table, {}, structured_reports="clean")
    assert set(clean) == {"pdf", "cda"}  # reports are shared once cleaned, however few; documents never


def test_presentation_state_with_text_is_not_shared(tmp_path):
    paths = []
    for n, text in enumerate([None, "Annotationplant"]):
        ds = Dataset()
        ds.SOPClassUID, ds.Modality = GSPS, "PR"
        ds.ContentLabel = "GSPS"
        if text:
            ds.GraphicAnnotationSequence = Sequence([_item(GraphicLayer="L1", TextObjectSequence=Sequence([
                _item(UnformattedTextValue=text, AnchorPointAnnotationUnits="PIXEL")]))])
        p = tmp_path / f"pr{n}.dcm"
        ds.save_as(p, implicit_vr=True, little_endian=True)
        paths.append(str(p))
    table = pd.DataFrame([{"path": paths[0], "series_key": "plain", "series_id": "plain", "kind": "presentation_state",
                           "Modality": "PR", "SOPClassUID": GSPS},
                          {"path": paths[1], "series_key": "text", "series_id": "text", "kind": "presentation_state",
                           "Modality": "PR", "SOPClassUID": GSPS}])
    drop = series_filter_reasons(table, {"max_instances": 0})
    assert set(drop) == {"text"} and drop["text"][1].startswith("presentation_state_text:")
    assert series_filter_reasons(table, {"max_instances": 0}, structured_reports="clean") == {}


@pytest.mark.parametrize("sop_class", [COMPREHENSIVE_SR, KOS])
def test_clean_mode_cleans_the_content_tree_at_every_depth(ct_file, sop_class):
    data = make_sr(ct_file, sop_class)
    for fast in (True, False):
        deid = make_deidentifier({"deid": {"structured_reports": "clean"}}, SECRET)
        deid.fast_path = fast
        out, _ = deidentify_bytes(deid, data)
        low = out.lower()
        for value in PLANTED + [str(pydicom.dcmread(ct_file).PatientID)]:
            assert value.lower().encode() not in low, (value, fast)
        ds = pydicom.dcmread(io.BytesIO(out))
        items = ds.ContentSequence[0].ContentSequence
        assert [i.ValueType for i in items] == ["TEXT", "PNAME", "DATE", "DATETIME", "TIME", "UIDREF", "TEXT"]
        assert items[2].Date != "19990417" and len(items[2].Date) == 8  # shifted, still a date
        assert items[5].UID.startswith("2.25.")
        assert ds.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue == "126010"  # structure kept


def test_clean_mode_shares_a_single_report_in_a_unit(ct_file, tmp_path):
    sr = tmp_path / "sr.dcm"
    sr.write_bytes(make_sr(ct_file))
    instances = pd.DataFrame([{"path": str(sr), "series_key": "k", "series_id": "s099", "kind": "structured_report",
                               "Modality": "SR", "SOPClassUID": COMPREHENSIVE_SR}])
    for mode, status in (("drop", "dropped"), ("clean", "written")):
        deid = make_deidentifier({"deid": {"structured_reports": mode}}, SECRET)
        manifest, counts, _ = deidentify_unit(instances, share_dir=tmp_path / mode, deid=deid)
        assert list(manifest["status"]) == [status]
    assert counts["written"] == 1


def test_clean_mode_writes_a_report_whose_file_meta_lacks_the_implementation_uid(ct_file):
    """A file written without a preamble or an Implementation Class UID (0002,0012), as
    pydicom writes without enforce_file_format, is read through pydicom (the SR path):
    the file meta the de-identifier completes must still be writable (it crashed)."""
    ds = pydicom.dcmread(io.BytesIO(make_sr(ct_file)))
    del ds.file_meta.ImplementationClassUID
    del ds.file_meta.ImplementationVersionName
    ds.preamble = None
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    data = buf.getvalue()
    assert data[128:132] != b"DICM" and data[:2] == b"\x02\x00"  # no preamble: the file meta first
    deid = make_deidentifier({"deid": {"structured_reports": "clean"}}, SECRET)
    out, _ = deidentify_bytes(deid, data)
    written = pydicom.dcmread(io.BytesIO(out))
    assert out[128:132] == b"DICM"
    assert written.file_meta.ImplementationClassUID and written.file_meta.ImplementationVersionName
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID != ds.SOPInstanceUID
    assert b"srplantname" not in out.lower()
