"""Snakemake is the engine: the rule chain, lint, environments, honest job state.

Fast checks (no workflow run); the runs that exercise reruns, withdrawal,
crashes and the wheel are in test_workflow.py.
"""
from __future__ import annotations

import ast
import errno
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pandas as pd
import pytest
import yaml

from dicomprep import paths, stages
from dicomprep import workflow_support as ws
from dicomprep.workflow_support import STAGE_RESOURCES
from dicomprep.errors import EnvironmentProblem, is_environment_error
from workflow_helpers import ROOT

STAGE_RULES = ["deidentify", "convert_dcm2niix", "convert_ncct", "decode_seg", "export_hdf5", "qc_unit"]


def _snakemake(*args: str, out) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--config", f"output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_every_stage_is_a_rule(tmp_path):
    proc = _snakemake("--list-rules", out=tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    rules = set(proc.stdout.split())
    assert set(STAGE_RULES) <= rules
    assert {"index", "select_units", "publish", "audit", "share_tables", "report", "verify"} <= rules
    assert set(paths.STAGE_RULES.values()) == set(STAGE_RULES)


def test_lint_reports_nothing(tmp_path):
    proc = _snakemake("--lint", out=tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def _rules_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))


def test_stage_rules_declare_log_benchmark_resources_conda_group():
    text = _rules_text()
    for rule in STAGE_RULES:
        body = re.search(rf"rule {rule}:\n(.*?)(?=\nrule |\ncheckpoint |\Z)", text, re.S).group(1)
        for directive in ("log:", "benchmark:", "threads:", "resources:", "**stage_resources(", "conda:",
                          "group:", "script:"):
            assert directive in body, f"rule {rule} lacks {directive}"
    dcm = re.search(r"rule convert_dcm2niix:\n(.*?)(?=\nrule |\Z)", text, re.S).group(1)
    assert 'ENVS / "dcm2niix.yaml"' in dcm


def test_stage_resources_are_sized_and_grow_per_attempt_on_a_cluster():
    """Every stage asks for memory and runtime; on a cluster a retry asks for more;
    locally they are plain numbers (nothing to evaluate per job)."""
    for stage in STAGE_RESOURCES:
        local = ws.stage_resources(stage, per_attempt=False)
        assert local == {"mem_mb": STAGE_RESOURCES[stage]["mem_mb"], "runtime": STAGE_RESOURCES[stage]["runtime"]}
        cluster = ws.stage_resources(stage, per_attempt=True)
        for key, amount in local.items():
            assert cluster[key](None, 1) == amount and cluster[key](None, 2) == 2 * amount


def _pyproject_pins(extras: tuple[str, ...] = ("slurm",)) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    return {d.split("==")[0].lower(): d.split("==")[1] for d in deps}


def _env_pins(name: str) -> tuple[dict[str, str], list]:
    env = yaml.safe_load((ROOT / "envs" / name).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {p.split("==")[0].lower(): p.split("==")[1] for p in pip}, env["dependencies"]


def _third_party_imports() -> set[str]:
    """Top-level modules the package imports (not stdlib, not dicomprep)."""
    names = set()
    for path in (ROOT / "src" / "dicomprep").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "dicomprep"}


@pytest.mark.parametrize("env_file", ["dicomprep.yaml", "dcm2niix.yaml"])
def test_environment_files_are_complete_and_pinned_like_pyproject(env_file):
    """Each rule environment holds everything the package imports, at the
    pyproject pins (conda channels are not reachable here: checked statically)."""
    pins, deps = _env_pins(env_file)
    project = _pyproject_pins()
    assert pins == project, set(pins.items()) ^ set(project.items())
    dist_of = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_third_party_imports()):
        dists = {d.lower() for d in dist_of.get(module, [])}
        if not dists & set(pins):
            missing.append((module, sorted(dists)))
    assert not missing, f"{env_file}: imported but not in the environment: {missing}"
    if env_file == "dcm2niix.yaml":
        assert f"dcm2niix={project['dcm2niix']}" in deps


def test_rules_name_only_existing_environment_files():
    for name in re.findall(r'ENVS / "([^"]+)"', _rules_text()):
        assert (ROOT / "envs" / name).is_file(), name


def test_environment_errors_fail_the_job_data_errors_do_not():
    assert is_environment_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_environment_error(PermissionError(errno.EACCES, "Permission denied"))
    assert is_environment_error(EnvironmentProblem("dcm2niix not found"))
    assert is_environment_error(MemoryError())
    assert not is_environment_error(ValueError("invalid literal for int() with base 10: '***'"))
    assert not is_environment_error(FileNotFoundError(errno.ENOENT, "missing source"))


def test_disk_full_fails_the_stage_instead_of_recording_it(tmp_path, monkeypatch):
    """ENOSPC while writing a CT volume raises out of the stage (Snakemake then
    removes the stage folder and the next run redoes it); a data error on the
    same series is a 'failed' row and the stage goes on."""
    from dicomprep.convert import ncct

    series = pd.DataFrame({"series_key": ["k1"], "series_id": ["s001"], "Modality": ["CT"], "kind": ["ct_axial"]})
    sources = pd.DataFrame({"series_key": ["k1"], "source_path": [str(tmp_path / "1.dcm")]})
    monkeypatch.setattr(ncct, "select_ct_series", lambda s, i, o: (s, pd.DataFrame(columns=["series_key", "series_id", "reason"])))
    share = paths.ShareTree(tmp_path / "share")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ncct, "convert_ct_series", full)
    with pytest.raises(OSError) as err:
        ncct.convert_unit(unit="g/s/P/S", series=series, sources=sources, share=share, config={})
    assert err.value.errno == errno.ENOSPC

    def bad_data(*_a, **_k):
        raise ValueError("slices of different sizes")

    monkeypatch.setattr(ncct, "convert_ct_series", bad_data)
    table = ncct.convert_unit(unit="g/s/P/S", series=series, sources=sources, share=share, config={})
    assert list(table["status"]) == ["failed"] and "different sizes" in table["reason"].iloc[0]


def test_adapters_take_exactly_the_rule_names():
    """A misspelt input/output/param name is an error, not silently swallowed."""
    with pytest.raises(TypeError):
        stages.convert_ncct(source="", stage="/x/private/stages/ncct/a/b/c/d", done="", unit="a/b/c/d",
                            setings="", log=None, config={}, threads=1)


def test_unit_of_share_path():
    assert paths.unit_of_share_path("dicom/g/s/P1/S1/s001/0001.dcm") == "g/s/P1/S1"
    assert paths.unit_of_share_path("nifti/g/s/P1/S1/x.nii.gz") == "g/s/P1/S1"
    assert paths.unit_of_share_path("hdf5/g/s/P1/S1.h5") == "g/s/P1/S1"
    assert paths.unit_of_share_path("tables/seg/g/s/P1/S1/segments.csv") == "g/s/P1/S1"
    assert paths.unit_of_share_path("qc/report.html") is None
    assert paths.unit_of_share_path("hdf5/cohort.h5") is None
    assert paths.unit_of_share_path("tables/series.csv") is None
    assert paths.layout_of_stage("/o/private/stages/deid/g/s/P/S").root.as_posix() == "/o"
    assert paths.layout_of("/o/private/units.csv", "private/units.csv").root.as_posix() == "/o"


def test_publish_mirrors_stages_and_withdraws_the_rest(tmp_path):
    from dicomprep.publish import publish_share, unexpected_share_files

    lay = paths.layout(tmp_path)
    stage_dirs = []
    for unit in ("g/s/P1/S1", "g/s/P2/S1"):
        tree = lay.stage_share("dcm2niix", unit)
        tree.nifti(unit).mkdir(parents=True)
        (tree.nifti(unit) / "a.nii.gz").write_bytes(unit.encode())
        stage_dirs.append(lay.stage_dir("dcm2niix", unit))
    publish_share(lay, stage_dirs)
    assert (lay.share.nifti("g/s/P2/S1") / "a.nii.gz").read_bytes() == b"g/s/P2/S1"
    assert os.path.samefile(lay.share.nifti("g/s/P1/S1") / "a.nii.gz",
                            lay.stage_share("dcm2niix", "g/s/P1/S1").nifti("g/s/P1/S1") / "a.nii.gz")
    lay.audit_yaml.write_text("cohort file")                      # cohort files are not publish's
    stray = lay.share.dicom("g/s/P9/S9") / "s001" / "0001.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    assert unexpected_share_files(lay) == ["dicom/g/s/P9/S9/s001/0001.dcm"]
    publish_share(lay, stage_dirs[:1])                           # P2 withdrawn from the input
    assert not lay.share.nifti("g/s/P2/S1").exists() and not stray.exists()
    assert not (lay.share_dir / "dicom").exists()                # empty folders go too
    assert lay.audit_yaml.read_text() == "cohort file"
    withdrawn = pd.read_csv(lay.withdrawn)
    assert set(withdrawn["unit"]) == {"g/s/P2/S1", "g/s/P9/S9"}
    assert unexpected_share_files(lay) == []


def test_input_state_changes_with_the_tree_only(tmp_path):
    from dicomprep.workflow_support import input_state

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"1")
    first = input_state(tmp_path)
    assert input_state(tmp_path) == first
    (tmp_path / "a" / "y.dcm").write_bytes(b"2")
    second = input_state(tmp_path)
    assert second != first
    (tmp_path / "a" / "y.dcm").unlink()
    assert input_state(tmp_path) == first
    assert input_state(tmp_path, enabled=False) == "refresh_index-off"


def test_a_unit_gets_jobs_only_for_stages_it_has_work_for():
    from dicomprep.workflow_support import stages_for

    cfg = {"anonymisation": True}
    assert stages_for({"dwi"}, cfg) == ["deid", "dcm2niix", "hdf5", "qc"]
    assert stages_for({"ct_axial", "seg"}, cfg) == ["deid", "dcm2niix", "ncct", "seg", "hdf5", "qc"]
    assert stages_for({"structured_report"}, cfg) == ["deid", "qc"]
    assert "deid" not in stages_for({"mr"}, {"anonymisation": False})


def test_settings_fingerprint_is_per_stage():
    from dicomprep.workflow_support import stage_settings

    base = {"anonymisation": True, "input_dir": "demo", "deid": {}, "convert": {"dcm2niix": {"naming": "default"},
                                                                              "ncct": {}, "steam": {}},
            "seg": {}, "export": {"hdf5": {}}, "qc": {}, "select": {}, "layout": "auto", "index": {}}
    changed = yaml.safe_load(yaml.safe_dump(base))
    changed["convert"]["dcm2niix"]["naming"] = "bids"
    differs = {s for s in ("deid", "dcm2niix", "ncct", "seg", "hdf5", "qc", "select", "index")
               if stage_settings(base, s) != stage_settings(changed, s)}
    assert differs == {"dcm2niix"}


def test_a_new_index_reader_version_re_runs_the_index_only(monkeypatch):
    """The index rule's settings param carries the reader version: a reader fix that
    changes what a file's row holds re-reads the tree on the next run (the rule's
    own cache then sees the new version), and no other stage's param moves."""
    from dicomprep import index
    from dicomprep.workflow_support import stage_settings

    cfg = {"anonymisation": True, "input_dir": "demo", "deid": {}, "convert": {"dcm2niix": {}, "ncct": {}, "steam": {}},
           "seg": {}, "export": {"hdf5": {}}, "qc": {}, "select": {}, "layout": "auto", "index": {}}
    stages = ("deid", "dcm2niix", "ncct", "seg", "hdf5", "qc", "select", "index")
    before = {s: stage_settings(cfg, s) for s in stages}
    monkeypatch.setattr(index, "READER_VERSION", index.READER_VERSION + 1)
    after = {s: stage_settings(cfg, s) for s in stages}
    assert {s for s in stages if before[s] != after[s]} == {"index"}
