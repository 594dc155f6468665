"""All-tags crawl: every attribute in one wide table, checked against pydicom's
own reading of the same files."""
from __future__ import annotations

import logging
import os
import shutil

import pandas as pd
import pydicom
import pytest

from dicomprep.crawl import ITEM_SEP, SERIES_SEP, crawl, crawl_file, write_crawl
from workflow_helpers import index_job


def _quiet():
    lg = logging.getLogger("dicomprep.test.crawl")
    lg.handlers[:] = [logging.NullHandler()]
    lg.propagate = False
    return lg


def test_nested_sequences_keep_every_item(testdata):
    path = testdata / "dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm"
    row = crawl_file(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = ds.PerFrameFunctionalGroupsSequence
    col = "PerFrameFunctionalGroupsSequence_PlanePositionSequence_ImagePositionPatient"
    got = row[col].split(ITEM_SEP)
    assert len(got) == len(frames) == 64
    for text, item in zip(got, frames):
        ref = [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
        assert [float(x) for x in text.split("\\")] == pytest.approx(ref)
    assert row["PerFrameFunctionalGroupsSequence__items"] == "64"
    assert row["ImageType"] == "\\".join(ds.ImageType)
    assert row["PatientName"] == str(ds.PatientName)


def test_private_names_binary_and_pixels(testdata):
    path = testdata / "dcm_qa_ts/In/1.dcm"
    row = crawl_file(path)
    ds = pydicom.dcmread(path)
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER")
    csa = ds[block.get_tag(0x10)]
    assert row["SIEMENS CSA HEADER_0029xx10"] == f"<{csa.VR}, {len(csa.value)} bytes, not dumped>"
    mr = ds.private_block(0x0019, "SIEMENS MR HEADER")
    assert row["SIEMENS MR HEADER_0019xx0B"] == str(ds[mr.get_tag(0x0B)].value)
    assert row["PixelData"].endswith(f"{len(ds.PixelData)} bytes, not dumped>")
    creator_element = (block.get_tag(0x10) & 0xFFFF) >> 8          # (0029,00xx)
    assert row[f"PrivateCreator_0029{creator_element:04X}"] == "SIEMENS CSA HEADER"


def test_crawl_per_instance_and_series(testdata):
    files = sorted((testdata / "dcm_qa_ge/In").rglob("*"))
    files = [f for f in files if f.is_file()]
    refs = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    inst = crawl(files, workers=2)          # process pool path
    assert len(inst) == len(files)
    assert list(inst["SOPInstanceUID"]) == [r.SOPInstanceUID for r in refs]
    ser = crawl(files, per="series")
    groups = {(r.SeriesInstanceUID, str(r.SeriesNumber)) for r in refs}
    assert len(ser) == len(groups)
    for row in ser.itertuples(index=False):
        members = [r for r in refs if f"{r.SeriesInstanceUID}#{r.SeriesNumber}" == row.series_key]
        assert row.n_instances == len(members)
        numbers = row.InstanceNumber.split(SERIES_SEP)
        assert sorted(numbers, key=int) == sorted({str(r.InstanceNumber) for r in members}, key=int)
        assert row.PatientID == members[0].PatientID          # equal everywhere: one value


def test_write_crawl_through_the_rule(testdata, tmp_path):
    tree = tmp_path / "in"
    shutil.copytree(testdata / "pydicom/dicomdirtests/98892003", tree / "98892003")
    (tree / "notes.txt").write_text("not dicom")
    out = tmp_path / "out"
    index_job(tree, out, threads=2, log=str(tmp_path / "index.log"),
              config={"layout": "auto", "index": {"workers": 2, "all_tags": True, "all_tags_per": "instance"}})
    idx = out / "private/index"
    inst = pd.read_parquet(idx / "instances.parquet")
    table = pd.read_parquet(idx / "all_tags.parquet")
    csv = pd.read_csv(idx / "all_tags.csv", dtype=str)
    assert len(table) == len(csv) == len(inst) == 17
    assert set(table["path"]) == set(inst["path"])
    assert set(table["series_key"]) == set(inst["series_key"])
    per_series = write_crawl(out, per="series", log=_quiet())
    ser = pd.read_parquet(per_series)
    assert len(ser) == inst["series_key"].nunique()
    assert ser["n_instances"].sum() == len(inst)


def test_a_stopped_crawl_resumes_and_an_unchanged_file_is_not_read_again(testdata, tmp_path, monkeypatch):
    """A probe's finding: a crawl killed mid-way started over, and every re-run read every
    file again (about 33 ms a file). Rows are now kept per file (size, mtime) in chunks
    as they finish: a stopped crawl reads only what it had not, an unchanged tree
    nothing, a touched file itself; the table equals an uninterrupted crawl's."""
    from dicomprep import crawl as crawl_mod

    tree = tmp_path / "in"
    shutil.copytree(testdata / "pydicom/dicomdirtests/98892003", tree / "98892003")
    out = tmp_path / "out"
    index_job(tree, out, threads=1, log=str(tmp_path / "index.log"), config={"layout": "auto", "index": {"workers": 1}})
    reference = crawl(list(pd.read_parquet(out / "private/index/instances.parquet")["path"]), "instance")
    monkeypatch.setattr(crawl_mod, "CACHE_CHUNK", 5)
    real, read = crawl_mod._crawl_all, []

    def counting(paths, workers):
        if len(read) >= 10:
            raise KeyboardInterrupt("stopped")        # the run is killed after two chunks
        read.extend(paths)
        return real(paths, workers)
    monkeypatch.setattr(crawl_mod, "_crawl_all", counting)
    with pytest.raises(KeyboardInterrupt):
        write_crawl(out, log=_quiet())
    assert len(read) == 10 and not (out / "private/index/all_tags.parquet").exists()
    read.clear()
    monkeypatch.setattr(crawl_mod, "_crawl_all", lambda paths, workers: (read.extend(paths), real(paths, workers))[1])
    table = pd.read_parquet(write_crawl(out, log=_quiet()))
    assert len(read) == 17 - 10                        # the rest only
    expected = reference.astype(object).where(reference.notna(), None)
    expected = expected.map(lambda v: None if v is None else str(v))
    same = [c for c in table.columns if c not in ("relpath", "series_key")]   # the reference has no index
    assert sorted(table.columns) == sorted(expected.columns)
    assert table[same].equals(expected[same])
    read.clear()
    write_crawl(out, log=_quiet())
    assert read == []                                  # unchanged: nothing read
    touched = sorted(pd.read_parquet(out / "private/index/instances.parquet")["path"])[0]
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))
    index_job(tree, out, threads=1, log=str(tmp_path / "index.log"), config={"layout": "auto", "index": {"workers": 1}})
    write_crawl(out, log=_quiet())
    assert read == [touched]


def test_any_crawled_attribute_can_be_queried(testdata, tmp_path):
    """A probe's finding: `--where FlipAngle=90` failed although the all-tags crawl holds
    FlipAngle; only the index's own columns could be asked. Instances meet a crawled
    condition by their own value, series when one of their instances does (checked
    against pydicom). A column nobody has is one sentence, without `config:`."""
    import dicomprep
    from dicomprep.errors import ConfigError

    tree = tmp_path / "in"
    shutil.copytree(testdata / "pydicom/dicomdirtests/98892003", tree / "98892003")
    out = tmp_path / "out"
    index_job(tree, out, threads=1, log=str(tmp_path / "index.log"),
              config={"layout": "auto", "index": {"workers": 1, "all_tags": True, "all_tags_per": "instance"}})
    idx = dicomprep.open_index(out)
    inst = idx.instances()
    flips = {p: pydicom.dcmread(p, stop_before_pixels=True).get("FlipAngle") for p in inst["path"]}
    wanted = sorted(p for p, v in flips.items() if v is not None and float(v) >= 30)
    assert 0 < len(wanted) < len(inst)
    assert sorted(idx.instances(FlipAngle={"min": 30})["path"]) == wanted
    keys = set(inst.loc[inst["path"].isin(wanted), "series_key"])
    assert set(idx.series(FlipAngle={"min": 30})["series_key"]) == keys
    assert sorted(idx.instances(FlipAngle={"min": 30}, Modality="MR")["path"]) == wanted   # mixed with index columns
    with pytest.raises(ConfigError, match=r"^query: there is no column 'NoSuchAttribute'"):
        idx.instances(NoSuchAttribute="1")
    # a crawl (or an index table) that is no longer Parquet: one sentence naming the file and the fix
    from dicomprep.errors import DicomprepError
    from dicomprep.paths import layout

    crawl = layout(out).all_tags_parquet
    crawl.write_bytes(crawl.read_bytes()[:500])
    with pytest.raises(DicomprepError, match=r"all_tags\.parquet is not a readable Parquet table.*index again"):
        idx.instances(FlipAngle={"min": 30})
    series = layout(out).index_dir / "series.parquet"
    series.write_bytes(b"not parquet")
    with pytest.raises(DicomprepError, match=r"series\.parquet is not a readable Parquet table"):
        dicomprep.open_index(out)
