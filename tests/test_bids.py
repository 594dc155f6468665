"""share/bids/ (issue 18): a BIDS dataset that the official validator accepts.

Two kinds of test:

* real data (dcm_qa_nih GE fMRI + Siemens EPI, dcm_qa_ge GE DWI, dcm_qa_enh
  Philips enhanced field map + Siemens enhanced fMRI), indexed, de-identified
  and converted by dicomprep's own functions in a temporary OUT, then
  :func:`build_bids`; checked by the official ``bids-validator`` (npm, 1.x,
  installed by ``.ci/install-bids-validator`` from ``make test``), against the
  upstream dcm2niix references (bval), and by the leak scan;
* synthetic NIfTI outputs with hand-written manifests, for the naming rules
  (runs, IntendedFor, site rules, labels, derivatives) without dcm2niix.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dicomprep.export import bids

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / ".ci" / "bids-validator" / "node_modules" / ".bin" / "bids-validator"
SECRET = "bids-test-secret-0123456789abcdef"
#: Real inputs: (folder in the tmp input tree, folder under shared data)
REAL_INPUTS = [
    ("nih/GE", "dcm_qa_nih/In/20180918GE/mr_0004"),      # GE EPI fMRI, 150 slice files
    ("nih/Si3", "dcm_qa_nih/In/20180918Si/mr_0003"),     # Siemens mosaic EPI, PE=AP
    ("nih/Si4", "dcm_qa_nih/In/20180918Si/mr_0004"),     # Siemens mosaic EPI, PE=PA
    ("ge", "dcm_qa_ge/In"),                               # GE DWI R2 + R3
    ("enh", "dcm_qa_enh/In"),                             # Philips fieldmap + Siemens XA10 fMRI
]


def run_validator(folder: Path) -> dict:
    """The official validator's JSON report of ``folder``."""
    if not VALIDATOR.exists():
        pytest.skip(f"bids-validator is not installed at {VALIDATOR}; run `bash .ci/install-bids-validator` "
                    "(make test does)")
    proc = subprocess.run([str(VALIDATOR), str(folder), "--json"], capture_output=True, text=True, timeout=300)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"bids-validator gave no JSON (exit {proc.returncode}): {proc.stderr[-2000:]}")


def issue_lines(report: dict, level: str) -> list[str]:
    return [f"{i['key']}: {i.get('reason', '')} "
            f"{[(f.get('file') or {}).get('relativePath') for f in i.get('files') or [] if f][:3]}"
            for i in report["issues"][level]]


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- real data ------------------------------------------------------------------------------------

def _convert_unit(out: Path, unit: str) -> None:
    """What the dcm2niix stage does for one unit, with its core functions:
    every series of the de-identified copy through convert_series, manifest last."""
    from dicomprep.convert import dcm2niix as d2n
    from dicomprep.units import load_unit_series, unit_sources

    sources = unit_sources(out, unit, True)
    subject, scan = unit.split("/")[2:]
    rows = []
    for _, s in load_unit_series(out, unit).sort_values("series_id").iterrows():
        paths, _ = d2n.select_series_files(sources[sources["series_key"] == s["series_key"]],
                                           diffusion=s["kind"] == "dwi")
        stem = d2n.default_stem(subject, scan, s["series_id"], d2n._series_description(paths[0]))
        res = d2n.convert_series(paths, out / "share" / "nifti" / unit, stem,
                                 diffusion=True if s["kind"] == "dwi" else None,
                                 log=out / "private" / "logs" / "dcm2niix.log")
        rows.append(dict(series_key=s["series_key"], series_id=s["series_id"], status=res.status,
                         reason=res.reason, outputs=";".join(str(p.relative_to(out)) for p in res.outputs),
                         seq_type=res.seq_type, n_volumes=res.n_volumes, dcm2niix_version=res.dcm2niix_version,
                         seq_source=res.seq_source))
    manifest = out / "private" / "stages" / "dcm2niix" / unit / "manifest.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=d2n.MANIFEST_COLUMNS).to_parquet(manifest, index=False)


@pytest.fixture(scope="module")
def real_out(testdata, tmp_path_factory):
    """OUT with index, units, de-identified DICOM, dcm2niix outputs + manifests, and share/bids/."""
    from dicomprep.config import load_config
    from dicomprep.deid import pseudonym
    from dicomprep.deid.unit import deidentify_unit
    from dicomprep.deid.dataset import make_deidentifier
    from dicomprep.index import build_index
    from dicomprep.select import build_units
    from dicomprep.units import load_unit_instances

    root = tmp_path_factory.mktemp("bids_real")
    inp, out = root / "in", root / "out"
    for dest, src in REAL_INPUTS:
        for p in sorted((testdata / src).rglob("*")):
            if p.is_file():
                link = inp / dest / p.relative_to(testdata / src)
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(p, link)
    old = os.environ.get("DICOMPREP_SECRET")
    os.environ["DICOMPREP_SECRET"] = SECRET
    try:
        config = load_config(overrides={"input_dir": str(inp), "output_dir": str(out),
                                        "export": {"bids": {"enabled": True}}})
        build_index(inp, out, layout=config["layout"])
        units = build_units(out, config)
        deid = make_deidentifier(config, pseudonym.load_secret(None))
        for unit in units["unit"]:
            inst = load_unit_instances(out, unit)
            manifest, _, _ = deidentify_unit(inst, share_dir=out / "share" / "dicom" / unit, deid=deid,
                                             drop_cfg=config["deid"]["drop_series"],
                                             fallback_key=str(inst["orig_subject"].iloc[0]))
            path = out / "private" / "stages" / "deid" / unit / "manifest.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            manifest.to_parquet(path, index=False)
            _convert_unit(out, unit)
    finally:
        if old is None:
            os.environ.pop("DICOMPREP_SECRET", None)
        else:
            os.environ["DICOMPREP_SECRET"] = old
    manifests = sorted((out / "private" / "stages" / "dcm2niix").rglob("manifest.parquet"))
    table = bids.build_bids(out_dir=out, manifests=manifests, config=config)
    return out, config, manifests, table


def test_official_validator_accepts_real_data(real_out):
    out, _, _, table = real_out
    report = run_validator(out / "share" / "bids")
    warnings = issue_lines(report, "warnings")
    print("bids-validator warnings:\n  " + "\n  ".join(warnings))
    assert report["issues"]["errors"] == [], "\n".join(issue_lines(report, "errors"))
    # what the validator saw: the datatypes the vendors' series are
    assert set(report["summary"]["dataTypes"]) >= {"bold", "dwi", "fieldmap", "magnitude"}
    # warnings we accept: no events.tsv for a task, unequal sessions, no authors
    assert {i["key"] for i in report["issues"]["warnings"]} <= {
        "EVENTS_TSV_MISSING", "MISSING_SESSION", "NO_AUTHORS", "INCONSISTENT_SUBJECTS",
        "INCONSISTENT_PARAMETERS", "SLICETIMING_VALUES_GREATOR_THAN_REPETITION_TIME"}


def test_every_series_has_a_bids_name_or_a_reason(real_out):
    out, _, manifests, table = real_out
    keys = set(pd.concat([pd.read_parquet(m) for m in manifests])["series_key"])
    assert set(table["series_key"]) == keys
    assert (table["status"].isin(["bids", "derivative"]) | (table["reason"].str.len() > 0)).all()
    named = table[table["status"] == "bids"]
    assert len(named) == 8, table.to_string()   # 4 bold (GE, 2 Siemens EPI, XA10), 2 dwi, fieldmap + magnitude
    for path in named["bids_path"]:
        assert (out / "share" / "bids" / path).is_file()


def test_real_layout_and_sidecars(real_out, testdata):
    out, _, _, table = real_out
    root = out / "share" / "bids"
    units = pd.read_csv(out / "private" / "units.csv", dtype=str)
    # participants.tsv: the pseudonyms and nothing else
    lines = (root / "participants.tsv").read_text().splitlines()
    assert lines[0] == "participant_id"
    assert set(lines[1:]) == {f"sub-{s}" for s in units["subject"]}
    desc = json.loads((root / "dataset_description.json").read_text())
    from dicomprep import __version__
    assert desc["GeneratedBy"][0] == {"Name": "dicomprep", "Version": __version__,
                                      "Description": "de-identification and BIDS naming of dcm2niix outputs"}
    assert desc["DatasetType"] == "raw" and desc["BIDSVersion"]
    # every BOLD sidecar: TaskName, RepetitionTime, SliceTiming (from dcm2niix)
    bolds = sorted(root.rglob("*_bold.json"))
    assert len(bolds) == 4
    for js in bolds:
        side = json.loads(js.read_text())
        assert side["TaskName"] == js.name.split("task-")[1].split("_")[0]
        assert side["RepetitionTime"] > 0 and len(side["SliceTiming"]) > 1
    assert any("task-rest" in p.name for p in bolds)   # Siemens XA10 "REST1 ..." (rest found in the description)
    # DWI: bval/bvec are the converted ones (same file: hardlinked), and bval is dcm2niix upstream's
    dwis = sorted(root.rglob("*_dwi.nii.gz"))
    assert [p.name.split("_")[2] for p in dwis] == ["run-1", "run-2"]
    row = table[table["bids_path"] == str(dwis[0].relative_to(root))].iloc[0]
    source = out / row["source"]
    assert os.path.samefile(source, dwis[0])
    ref = np.loadtxt(testdata / "dcm_qa_ge" / "Ref" / "Ax_DWI_TENSOR_R2_1.bval")
    np.testing.assert_array_equal(np.loadtxt(str(dwis[0]).replace(".nii.gz", ".bval")), ref)
    assert nib.load(str(dwis[0])).shape[3] == len(ref)
    # field map in Hz with its magnitude, Units kept
    fmap = next(root.rglob("*_fieldmap.json"))
    assert json.loads(fmap.read_text())["Units"] == "Hz"
    assert Path(str(fmap).replace("_fieldmap.json", "_magnitude.nii.gz")).is_file()
    # BIDS labels: letters and digits only
    for p in root.rglob("sub-*"):
        for part in p.name.split(".")[0].split("_"):
            key, _, value = part.partition("-")
            if value:
                assert value.isalnum(), p


def test_leak_scan_of_share_bids(real_out):
    from dicomprep.verify.share import verify_share

    out, config, _, _ = real_out
    result = verify_share(out, config=config, output=out / "private" / "verification_bids.json")
    assert result["files_scanned"] > 0
    assert result["status"] == "pass" and result["hits"] == [], result["hits"][:5]


def test_rebuild_is_byte_identical_and_replaces(real_out, tmp_path):
    out, config, manifests, _ = real_out
    root = out / "share" / "bids"
    before = checksums(root)
    (root / "stale.txt").write_text("left from an earlier run")
    bids.build_bids(out_dir=out, manifests=manifests, config=config)
    assert checksums(root) == before
    copy = bids.build_bids(out_dir=out, manifests=manifests, config={"export": {"bids": {"link": "copy"}}},
                           bids_dir=tmp_path / "bids")
    assert checksums(tmp_path / "bids") == before
    assert not list(out.glob("share/.bids*"))
    assert len(copy) > 0


# --- synthetic outputs: the rules ----------------------------------------------------------------

def _nifti(path: Path, volumes: int = 1) -> None:
    shape = (8, 8, 4) + ((volumes,) if volumes > 1 else ())   # the validator wants > a header when gzipped
    data = np.random.default_rng(0).integers(0, 1000, size=shape, dtype=np.int16)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    if volumes > 1:
        img.header["pixdim"][4] = 2.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _series(out: Path, unit: str, sid: str, outputs: dict[str, dict], *, kind: str = "mr", volumes: int = 1,
            bval: list[int] | None = None, csv: bool = False, seq_type: str = "none") -> dict:
    """Write fake dcm2niix outputs ``{tag: sidecar}`` of one series; return its manifest row."""
    files = []
    for tag, sidecar in outputs.items():
        base = out / "share" / "nifti" / unit / f"{unit.split('/')[2]}_{sid}{tag}"
        _nifti(Path(str(base) + ".nii.gz"), volumes)
        Path(str(base) + ".json").write_text(json.dumps({"Modality": "MR", **sidecar}))
        files += [Path(str(base) + ".nii.gz"), Path(str(base) + ".json")]
        if bval:
            Path(str(base) + ".bval").write_text(" ".join(map(str, bval)) + "\n")
            Path(str(base) + ".bvec").write_text("\n".join(" ".join(["0"] * len(bval)) for _ in range(3)) + "\n")
            files += [Path(str(base) + ".bval"), Path(str(base) + ".bvec")]
        if csv:
            Path(str(base) + ".csv").write_text("volume,bvalue\n0,0\n")
            files.append(Path(str(base) + ".csv"))
    return dict(series_key=f"k{unit.split('/')[3]}{sid}", series_id=sid, status="converted", reason="",
                outputs=";".join(str(f.relative_to(out)) for f in files), seq_type=seq_type,
                n_volumes=volumes, dcm2niix_version="v1.0.20260724", seq_source="", kind=kind)


def _cohort(out: Path, units: dict[str, list[dict]]) -> list[Path]:
    """units.csv, per-unit series tables and dcm2niix manifests for fake units."""
    rows, manifests = [], []
    for unit, series in units.items():
        g, s, subject, scan = unit.split("/")
        rows.append(dict(unit=unit, group=g, sequence=s, subject=subject, scan=scan))
        udir = out / "private" / "units" / unit
        udir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"series_key": r["series_key"], "series_id": r["series_id"], "kind": r["kind"],
                       "Modality": "MR", "SeriesDescription": r.get("private_description", "")}
                      for r in series]).to_parquet(udir / "series.parquet")
        manifest = out / "private" / "stages" / "dcm2niix" / unit / "manifest.parquet"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{k: v for k, v in r.items() if k not in ("kind", "private_description")}
                      for r in series]).to_parquet(manifest)
        manifests.append(manifest)
    pd.DataFrame(rows).to_csv(out / "private" / "units.csv", index=False)
    return manifests


BOLD = {"SeriesDescription": "fMRI task-nback", "ScanningSequence": "EP\\GR", "RepetitionTime": 2.0,
        "SliceTiming": [0.0, 0.6, 1.2], "PhaseEncodingDirection": "j-", "EchoTime": 0.03,
        "TotalReadoutTime": 0.03}
T1 = {"SeriesDescription": "sag MPRAGE", "ScanningSequence": "GR\\IR", "RepetitionTime": 2.3}


def _ncct_manifest(out: Path, unit: str) -> Path:
    path = out / "private" / "stages" / "ncct" / unit / "manifest.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture()
def fake(tmp_path):
    out = tmp_path / "out"
    unit = "exam/exam/P1a2b3c/S9z8y7x"
    series = [
        _series(out, unit, "s002", {"": T1}),
        _series(out, unit, "s003", {"": T1}),
        _series(out, unit, "s004", {"": BOLD}, volumes=5),
        _series(out, unit, "s005", {"_e1": {"SeriesDescription": "B0 map", "EchoNumber": 1, "EchoTime": 0.002},
                                    "_e2_fieldmaphz": {"SeriesDescription": "B0 map", "EchoNumber": 2,
                                                       "Units": "Hz"}}),
        _series(out, unit, "s006", {"": {"SeriesDescription": "DTI", "ScanningSequence": "EP\\SE",
                                         "RepetitionTime": 5.0, "PhaseEncodingDirection": "j",
                                         "TotalReadoutTime": 0.05}},
                kind="dwi", volumes=3, bval=[0, 1000, 1000], csv=True, seq_type="steam"),
        _series(out, unit, "s007", {"": {"SeriesDescription": "survey"}}),
        _series(out, unit, "s008", {"": {"SeriesDescription": "", "ScanningSequence": "GR\\IR"}}),
        _series(out, unit, "s009", {"": {**BOLD, "SeriesDescription": "rest bold", "RepetitionTime": None}},
                volumes=4),
        _series(out, unit, "s012", {"": {"SeriesDescription": "B0 alone", "Units": "Hz"}}),
        _series(out, unit, "s013", {"": {**BOLD, "SeriesDescription": "SE fmap", "PhaseEncodingDirection": "x"}},
                volumes=2),
        _series(out, unit, "s011", {"_e1": {**BOLD, "SeriesDescription": "ME task-memory", "EchoNumber": 1},
                                    "_e2": {**BOLD, "SeriesDescription": "ME task-memory", "EchoNumber": 2,
                                            "EchoTime": 0.05}}, volumes=4),
    ]
    next(r for r in series if r["series_id"] == "s008")["private_description"] = "T1 MPRAGE Smith"  # private only
    unit2 = "exam/exam/P_x-9/Sq.1"                            # labels must lose non-alphanumerics
    series2 = [_series(out, unit2, "s001", {"": T1})]
    manifests = _cohort(out, {unit: series, unit2: series2})
    ct = out / "share" / "nifti" / unit / "P1a2b3c_s010_ct.nii.gz"        # a CT stage output
    _nifti(ct)
    pd.DataFrame([dict(series_key="kct", series_id="s010", status="converted", reason="",
                       outputs=str(ct.relative_to(out)))]).to_parquet(_ncct_manifest(out, unit))
    return out, manifests


def test_synthetic_names_runs_intendedfor_and_reasons(fake):
    out, manifests = fake
    table = bids.build_bids(out_dir=out, manifests=manifests, config={"export": {"bids": {"enabled": True}}},
                            derivative_manifests=sorted((out / "private" / "stages" / "ncct").rglob("manifest.parquet")))
    by_id = {(r.unit.split("/")[2], r.series_id, Path(r.source).name if r.source else ""): r
             for r in table.itertuples()}
    sub = "sub-P1a2b3c/ses-S9z8y7x"
    expect = {
        "s002": f"{sub}/anat/sub-P1a2b3c_ses-S9z8y7x_run-1_T1w.nii.gz",
        "s003": f"{sub}/anat/sub-P1a2b3c_ses-S9z8y7x_run-2_T1w.nii.gz",
        "s004": f"{sub}/func/sub-P1a2b3c_ses-S9z8y7x_task-nback_bold.nii.gz",
        "s006": f"{sub}/dwi/sub-P1a2b3c_ses-S9z8y7x_dwi.nii.gz",
        "s008": f"{sub}/anat/sub-P1a2b3c_ses-S9z8y7x_run-3_T1w.nii.gz",
    }
    for sid, path in expect.items():
        row = next(r for k, r in by_id.items() if k[1] == sid and k[0] == "P1a2b3c")
        assert row.status == "bids" and row.bids_path == path, row
    fm = table[table["series_id"] == "s005"].set_index("rule")["bids_path"]
    assert fm["fieldmap-hz"] == f"{sub}/fmap/sub-P1a2b3c_ses-S9z8y7x_fieldmap.nii.gz"
    assert fm["fieldmap-hz-magnitude"] == f"{sub}/fmap/sub-P1a2b3c_ses-S9z8y7x_magnitude.nii.gz"
    survey = table[table["series_id"] == "s007"].iloc[0]
    assert survey["status"] == "skipped" and "no BIDS rule matched" in survey["reason"]
    assert "Smith" not in "".join(table["bids_path"]) + "".join(table["reason"])
    other = table[table["unit"].str.contains("P_x-9")].iloc[0]
    assert other["bids_path"] == "sub-Px9/ses-Sq1/anat/sub-Px9_ses-Sq1_T1w.nii.gz"
    root = out / "share" / "bids"
    side = json.loads((root / expect["s004"].replace(".nii.gz", ".json")).read_text())
    assert side["TaskName"] == "nback" and side["SliceTiming"] == [0.0, 0.6, 1.2]
    fmap_side = json.loads((root / fm["fieldmap-hz"].replace(".nii.gz", ".json")).read_text())
    assert fmap_side["IntendedFor"] == [
        "ses-S9z8y7x/dwi/sub-P1a2b3c_ses-S9z8y7x_dwi.nii.gz",
        "ses-S9z8y7x/func/sub-P1a2b3c_ses-S9z8y7x_task-memory_echo-1_bold.nii.gz",
        "ses-S9z8y7x/func/sub-P1a2b3c_ses-S9z8y7x_task-memory_echo-2_bold.nii.gz",
        "ses-S9z8y7x/func/sub-P1a2b3c_ses-S9z8y7x_task-nback_bold.nii.gz"]
    # STEAM b-value table: derivatives, with the derivative dataset description
    assert (root / "derivatives/dicomprep/sub-P1a2b3c/ses-S9z8y7x/dwi/P1a2b3c_s006.csv").is_file()
    dd = json.loads((root / "derivatives/dicomprep/dataset_description.json").read_text())
    assert dd["DatasetType"] == "derivative" and dd["GeneratedBy"][0]["Name"] == "dicomprep"
    ct = table[table["series_id"] == "s010"].iloc[0]
    assert ct["status"] == "derivative"
    assert ct["bids_path"] == "derivatives/dicomprep/sub-P1a2b3c/ses-S9z8y7x/ncct/P1a2b3c_s010_ct.nii.gz"
    assert os.path.samefile(root / ct["bids_path"], out / ct["source"])
    alone = table[table["series_id"] == "s012"].iloc[0]
    assert alone["status"] == "skipped" and "without a magnitude" in alone["reason"]
    no_dir = table[table["series_id"] == "s013"].iloc[0]
    assert no_dir["status"] == "skipped" and "dir-" in no_dir["reason"]
    no_tr = table[table["series_id"] == "s009"].iloc[0]
    assert no_tr["status"] == "skipped" and "lacks RepetitionTime" in no_tr["reason"]
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-P1a2b3c\nsub-Px9\n"
    assert not (root / ".bidsignore").exists()
    report = run_validator(root)
    assert report["issues"]["errors"] == [], "\n".join(issue_lines(report, "errors"))


def test_entity_templates_never_use_the_original_description(fake):
    out, manifests = fake
    cfg = {"export": {"bids": {"rules": [
        {"name": "s008", "when": {"description": {"regex": "Smith"}}, "datatype": "anat", "suffix": "T1w",
         "entities": {"acq": "{description}x"}}]}}}
    table = bids.build_bids(out_dir=out, manifests=manifests, config=cfg)
    row = table[table["series_id"] == "s008"].iloc[0]
    assert row["rule"] == "s008" and "_acq-x_T1w" in row["bids_path"] and "Smith" not in row["bids_path"]
    cfg["export"]["bids"]["rules"][0]["entities"] = {"acq": "{protocol}"}
    from dicomprep.errors import ConfigError
    with pytest.raises(ConfigError, match="protocol"):
        bids.build_bids(out_dir=out, manifests=manifests, config=cfg)


def test_site_rules_come_first_and_can_skip(fake):
    out, manifests = fake
    cfg = {"export": {"bids": {"rules": [
        {"name": "site-survey", "when": {"description": {"regex": "survey"}}, "datatype": "anat",
         "suffix": "T2w", "entities": {"acq": "{description}"}},
        {"name": "no-dwi", "when": {"has_bval": True}, "skip": "DWI is shared elsewhere"},
    ]}}}
    table = bids.build_bids(out_dir=out, manifests=manifests, config=cfg)
    survey = table[table["series_id"] == "s007"].iloc[0]
    assert survey["bids_path"].endswith("anat/sub-P1a2b3c_ses-S9z8y7x_acq-survey_T2w.nii.gz")
    dwi = table[table["series_id"] == "s006"].iloc[0]
    assert dwi["status"] == "skipped" and dwi["reason"] == "DWI is shared elsewhere"
    # the IntendedFor of the field map now lists only the BOLD run
    fmap = next((out / "share" / "bids").rglob("*_fieldmap.json"))
    assert json.loads(fmap.read_text())["IntendedFor"] == [
        "ses-S9z8y7x/func/sub-P1a2b3c_ses-S9z8y7x_task-memory_echo-1_bold.nii.gz",
        "ses-S9z8y7x/func/sub-P1a2b3c_ses-S9z8y7x_task-memory_echo-2_bold.nii.gz",
        "ses-S9z8y7x/func/sub-P1a2b3c_ses-S9z8y7x_task-nback_bold.nii.gz"]


def test_derivatives_off_leaves_them_out_with_a_reason(fake):
    out, manifests = fake
    table = bids.build_bids(out_dir=out, manifests=manifests, config={"export": {"bids": {"derivatives": False}}})
    assert not (out / "share" / "bids" / "derivatives").exists()
    assert "derivative" not in set(table["status"])
    assert (out / "share" / "bids" / "sub-P1a2b3c").is_dir()


def test_colliding_labels_are_refused(fake):
    from dicomprep.errors import DicomprepError

    out, manifests = fake
    units = pd.read_csv(out / "private" / "units.csv")
    pd.concat([units, units.assign(unit="exam/exam/P.1a2b3c/S1", subject="P.1a2b3c", scan="S1")]).to_csv(
        out / "private" / "units.csv", index=False)
    with pytest.raises(DicomprepError, match="sub-P1a2b3c"):
        bids.build_bids(out_dir=out, manifests=manifests, config={})


def test_bad_rule_is_refused_with_a_sentence():
    from dicomprep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export.bids.rules\[0\].datatype"):
        bids.rules_from_config({"rules": [{"when": {"kind": "mr"}, "datatype": "pet", "suffix": "x"}]})
    with pytest.raises(ConfigError, match="no such feature"):
        bids.rules_from_config({"rules": [{"when": {"SeriesDescr": "x"}, "datatype": "anat", "suffix": "T1w"}]})


def test_labels():
    assert bids.label("P_1a-2.b") == "P1a2b"
    assert bids.task_label("rfMRI task-nback AP") == "nback"
    assert bids.task_label("", "Resting state") == "rest"
    assert bids.task_label("", "Smith fMRI") == "unknown"       # the private text never becomes a label
    assert bids.task_label("", "Interest fMRI") == "unknown"
    assert bids.task_label("", "rfMRI_REST_AP") == "rest"
    assert bids.dir_label("EPI PE=AP", "j-") == "AP"
    assert bids.dir_label("", "j-") == "jminus"


def test_cli_builds_the_cohort_from_standard_places(fake, capsys):
    from dicomprep.cli import main

    out, _ = fake
    assert main(["bids", str(out), "--config", "export.bids.link=copy"]) == 0
    table = pd.read_parquet(out / "private" / "bids" / "bids.parquet")
    assert set(table["status"]) == {"bids", "derivative", "skipped"}
    assert "ncct" in set(table["rule"])          # the CT stage's manifest was found in its standard place
    assert "images named" in capsys.readouterr().out
    assert main(["bids", str(out / "nowhere")]) == 2
    assert "private/units.csv" in capsys.readouterr().err
