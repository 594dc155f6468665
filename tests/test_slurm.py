"""Cluster runs (issue 14): the SLURM profile, `dicomprep run --cluster`, and
the secret's handling; and the demo for real through a SLURM scheduler when
one is up (CI starts a one-node cluster with .ci/slurm-up)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomprep import cli
from dicomprep.cluster import merge_profile, on_cluster, requested_executor, split_mapping_args
from dicomprep.deid import pseudonym
from dicomprep.errors import SecretMissing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_helpers import ROOT, checksums, run_workflow  # noqa: E402

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("DICOMPREP_SECRET", pseudonym.REQUIRE_FILE_ENV, "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _secret_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


# --- the secret -----------------------------------------------------------------

def test_secret_file_readable_by_others_is_refused(tmp_path, clean_env):
    path = _secret_file(tmp_path, 0o644)
    with pytest.raises(SecretMissing, match=r"mode 0644.*chmod 600"):
        pseudonym.load_secret(path)
    path.chmod(0o640)
    with pytest.raises(SecretMissing, match="mode 0640"):
        pseudonym.load_secret(path)


def test_private_secret_file_is_used(tmp_path, clean_env):
    path = _secret_file(tmp_path, 0o600)
    assert pseudonym.load_secret(path) == SECRET.encode()
    # On a cluster the file is exactly what is wanted.
    clean_env.setenv(pseudonym.REQUIRE_FILE_ENV, "1")
    assert pseudonym.load_secret(path) == SECRET.encode()


@pytest.mark.parametrize("marker", [(pseudonym.REQUIRE_FILE_ENV, "1"), ("SLURM_JOB_ID", "42")])
def test_environment_secret_refused_on_a_cluster(tmp_path, clean_env, marker):
    clean_env.setenv("DICOMPREP_SECRET", SECRET)
    assert pseudonym.load_secret(None) == SECRET.encode()  # locally it is fine
    clean_env.setenv(*marker)
    with pytest.raises(SecretMissing, match=r"DICOMPREP_SECRET is set.*deid\.secret_file"):
        pseudonym.load_secret(_secret_file(tmp_path, 0o600), demo=True)


def test_demo_notice_only_when_the_demo_secret_is_used(clean_env, capsys):
    clean_env.setattr(pseudonym, "_demo_notice_shown", False)
    clean_env.setenv("DICOMPREP_SECRET", SECRET)
    assert pseudonym.load_secret(None, demo=True) == SECRET.encode()
    assert "demo secret" not in capsys.readouterr().err
    clean_env.delenv("DICOMPREP_SECRET")
    assert pseudonym.load_secret(None, demo=True) == pseudonym.DEMO_SECRET
    assert pseudonym.load_secret(None, demo=True) == pseudonym.DEMO_SECRET
    assert capsys.readouterr().err.count("fixed demo secret") == 1


def test_cluster_run_refuses_environment_secret_before_starting(tmp_path, clean_env, capsys):
    clean_env.setenv("DICOMPREP_SECRET", SECRET)
    code = cli.main(["run", "demo", str(tmp_path / "out"), "--cluster", "slurm", "-n"])
    err = capsys.readouterr().err
    assert code == 2
    assert "DICOMPREP_SECRET is set" in err and "unset DICOMPREP_SECRET" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cluster_run_refuses_unknown_profile(tmp_path, clean_env, capsys):
    assert cli.main(["run", "demo", str(tmp_path / "out"), "--cluster", "nosuch"]) == 2
    assert "no such profile" in capsys.readouterr().err


# --- the profile ----------------------------------------------------------------

def test_profile_works_without_accounting_and_retries_with_more():
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"  # sacct fails without slurmdbd
    # MinJobAge must cover 3x the first check or the plugin falls back to sacct.
    assert 3 * int(profile["slurm-init-seconds-before-status-checks"]) < 300
    assert int(profile["retries"]) >= 1
    for key in ("mem_mb", "runtime"):
        assert "attempt" in str(profile["default-resources"][key])
    # Nothing site-specific that would make sbatch fail on another cluster.
    text = PROFILE.read_text()
    assert "CHANGE_ME" not in text
    assert not {"slurm_account", "slurm_partition"} & set(profile["default-resources"])
    assert profile["group-components"]["unit"] >= 1


def test_the_executor_is_read_from_the_command_line_and_its_profiles(tmp_path):
    """The Snakefile asks which executor the command names (parsed before Snakemake
    picks one): a cluster run with an environment secret is refused at parse time."""
    assert requested_executor(["snakemake", "--cores", "2"], {}) == "local"
    assert requested_executor(["snakemake", "--executor", "slurm"], {}) == "slurm"
    assert requested_executor(["snakemake", "-e", "slurm"], {}) == "slurm"
    assert requested_executor(["snakemake", "--executor=slurm"], {}) == "slurm"
    assert requested_executor(["snakemake", "--profile", str(PROFILE.parent)], {}) == "slurm"
    assert requested_executor(["snakemake"], {"SNAKEMAKE_PROFILE": str(PROFILE.parent)}) == "slurm"
    assert requested_executor(["snakemake", "--workflow-profile", str(ROOT / "profiles" / "default")], {}) == "local"
    assert on_cluster(["snakemake", "--profile", str(PROFILE.parent)], {})
    assert not on_cluster(["snakemake", "--executor", "dryrun"], {})
    assert not on_cluster(["snakemake", "--profile", str(tmp_path / "missing")], {})


def test_plain_snakemake_with_the_cluster_profile_refuses_an_environment_secret(tmp_path, clean_env):
    """`snakemake --profile profiles/slurm` (not only `dicomprep run --cluster`)
    refuses DICOMPREP_SECRET before any job: the scheduler would keep it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               DICOMPREP_SECRET="an-environment-secret-0123456789")
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n",
           "--directory", str(out), "--config", f"input_dir={tmp_path / 'in'}", f"output_dir={out}"]
    refused = subprocess.run(cmd + ["--profile", str(PROFILE.parent)], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=300)
    assert refused.returncode != 0
    assert "DICOMPREP_SECRET is set" in refused.stdout + refused.stderr
    local = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert "DICOMPREP_SECRET is set" not in local.stdout + local.stderr, local.stderr[-2000:]


def test_profile_names_only_rules_that_exist(tmp_path, clean_env):
    """A rule named in groups/set-resources/set-threads that does not exist is
    ignored by Snakemake without a word (issue 14): list the workflow's rules."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--list-rules",
         "--directory", str(tmp_path), "--config", "input_dir=demo", f"output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rules = set(proc.stdout.split())
    profile = yaml.safe_load(PROFILE.read_text())
    named = set(profile.get("groups") or {}) | set(profile.get("set-resources") or {}) \
        | set(profile.get("set-threads") or {})
    assert named <= rules, f"profiles/slurm names rules the workflow does not have: {sorted(named - rules)}"


def test_site_settings_merge_over_the_profile_key_by_key():
    base = yaml.safe_load(PROFILE.read_text())
    site = {"default-resources": {"slurm_account": "lab", "slurm_partition": "short"}, "jobs": 10}
    from_cli, rest = split_mapping_args(["--default-resources", "mem_mb=9000", "runtime=30",
                                         "--rerun-triggers", "mtime", "--resources=mem_mb=64000"])
    assert rest == ["--rerun-triggers", "mtime"]
    merged = merge_profile(base, site, from_cli)
    res = merged["default-resources"]
    assert res == {"mem_mb": 9000, "runtime": 30, "slurm_account": "lab", "slurm_partition": "short"}
    assert merged["resources"]["mem_mb"] == 64000 and merged["jobs"] == 10
    assert merged["slurm-status-command"] == "squeue"
    # The profile on disk is not changed.
    assert "slurm_account" not in yaml.safe_load(PROFILE.read_text())["default-resources"]


# --- for real, on a SLURM cluster ----------------------------------------------

def _cluster_state() -> str | None:
    """Why the SLURM test cannot run here, or None when a cluster is up."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found); CI starts a one-node cluster with .ci/slurm-up"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "the SLURM executor plugin is not installed (pip install '.[slurm]')"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 60 s: no SLURM controller is running"
    states = set(proc.stdout.split())
    if proc.returncode != 0 or not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no SLURM node is up (sinfo: {proc.stdout.strip() or proc.stderr.strip() or 'nothing'})"
    return None


@pytest.mark.slow
def test_demo_through_slurm_equals_local_run(demo_run, tmp_path, clean_env):
    reason = _cluster_state()
    if reason:
        pytest.skip(reason)
    local, _ = demo_run
    if "naming" in (local / ".snakemake" / "dicomprep-overrides.yaml").read_text():  # another test changed it
        local = tmp_path / "local"
        proc = run_workflow("demo", local)
        assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "slurm"
    # Exactly the README's command.
    proc = run_workflow("demo", out, "--cluster", "slurm")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert checksums(out / "share") == checksums(local / "share")
    # Unit work went through sbatch as grouped jobs, and SLURM ran them.
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    unit_jobs = [jid for jid, path in submitted if "group_unit" in path]
    assert unit_jobs, log[-4000:]
    for jid in unit_jobs:
        show = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True, timeout=30)
        assert "JobState=COMPLETED" in show.stdout, show.stdout + show.stderr
    assert not re.search(r"^localrule process_unit", log, re.M)
    assert "fixed demo secret" in log


def test_cluster_profile_given_as_profile_gets_the_same_checks(tmp_path, clean_env, capsys):
    clean_env.setenv("DICOMPREP_SECRET", SECRET)
    code = cli.main(["run", "demo", str(tmp_path / "out"), "--profile", str(PROFILE.parent), "-n"])
    assert code == 2 and "DICOMPREP_SECRET is set" in capsys.readouterr().err
