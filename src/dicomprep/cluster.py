"""Running the workflow on a cluster: `dicomprep run ... --cluster slurm`.

The checks a new user would otherwise meet as a hung or failed run, done
before anything starts, and the one profile Snakemake gets:

* the executor plugin and the scheduler's commands are there;
* the secret does not travel in the environment (the SLURM plugin submits
  with ``sbatch --export=ALL``, and the scheduler keeps that environment where
  cluster administrators can read it): jobs get
  ``DICOMPREP_REQUIRE_SECRET_FILE=1`` so that :func:`load_secret` refuses an
  environment secret on the nodes too, and the secret comes from
  ``deid.secret_file`` (mode 0600);
* site values (account, partition, memory, runtime) given as a small YAML
  (``--cluster-settings``) or as ``--default-resources`` on the command line
  are merged key by key over the workflow's profile, instead of replacing
  its whole ``default-resources`` list as Snakemake does with a second value.

Never imports snakemake.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import yaml

from .config import workflow_root
from .deid.pseudonym import REQUIRE_FILE_ENV
from .errors import DicomprepError

#: Executor plugin (Python module) and the scheduler commands each profile needs.
EXECUTORS = {
    "slurm": ("snakemake_executor_plugin_slurm", ("sbatch", "squeue", "sinfo")),
}
#: Profile keys whose value is a mapping: merged key by key, not replaced.
MAPPING_KEYS = ("default-resources", "resources", "groups", "group-components", "set-threads",
                "set-resource-scopes")
#: Two-level mapping (rule -> resource -> value).
NESTED_KEYS = ("set-resources",)


def profile_dir(name: str) -> Path:
    """The profile folder: a name under the workflow's ``profiles/`` or a path."""
    builtin = workflow_root() / "profiles" / name
    path = builtin if (builtin / "config.yaml").is_file() else Path(name).expanduser()
    if not (path / "config.yaml").is_file():
        names = sorted(p.name for p in (workflow_root() / "profiles").iterdir() if (p / "config.yaml").is_file())
        raise DicomprepError(
            f"--cluster {name}: no such profile; give one of {', '.join(names)} or a folder holding config.yaml."
        )
    return path.resolve()


def read_profile(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise DicomprepError(f"{path}: a profile is a YAML mapping of Snakemake options (key: value).")
    return data


def is_cluster_profile(folder: str) -> bool:
    """True when the profile folder sends jobs to a scheduler (its executor is one we know)."""
    path = Path(folder).expanduser() / "config.yaml"
    return path.is_file() and str(read_profile(path).get("executor", "")) in EXECUTORS


#: Executors that run jobs on this machine (or none): no scheduler involved.
LOCAL_EXECUTORS = ("local", "dryrun", "touch")


def _option_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """The values given to any of ``names`` in ``argv`` (``--opt V`` or ``--opt=V``)."""
    values = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def _profile_folder(name: str) -> Path | None:
    """A Snakemake ``--profile`` value as a folder: a path, else a name under
    ``~/.config/snakemake`` or ``/etc/xdg/snakemake`` (Snakemake's search order)."""
    for candidate in (Path(name).expanduser(), Path.home() / ".config" / "snakemake" / name,
                      Path("/etc/xdg/snakemake") / name):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def requested_executor(argv: list[str], environ: dict) -> str:
    """The executor a Snakemake command line asks for, read while the Snakefile is
    parsed (Snakemake picks its executor only afterwards, so ``workflow.non_local_exec``
    is False then even under ``--executor slurm``): ``--executor``/``-e``, else the
    ``executor:`` of its ``--profile``/``--workflow-profile`` folders or
    ``$SNAKEMAKE_PROFILE``; ``"local"`` when none names one."""
    given = _option_values(argv, ("--executor", "-e"))
    if given:
        return given[-1]
    profiles = _option_values(argv, ("--profile", "--workflow-profile"))
    if not profiles and environ.get("SNAKEMAKE_PROFILE"):
        profiles = [environ["SNAKEMAKE_PROFILE"]]
    for name in reversed(profiles):
        folder = _profile_folder(name)
        if folder is not None:
            try:
                executor = read_profile(folder / "config.yaml").get("executor")
            except (OSError, yaml.YAMLError, DicomprepError):
                continue
            if executor:
                return str(executor)
    return "local"


def on_cluster(argv: list[str], environ: dict) -> bool:
    """True when this Snakemake invocation sends jobs to a scheduler (:func:`requested_executor`)."""
    return requested_executor(argv, environ) not in LOCAL_EXECUTORS


def cluster_env() -> dict:
    """Snakemake's environment for a cluster run: no secret in it, and every
    job refuses one (see :func:`dicomprep.deid.pseudonym.secret_must_come_from_file`)."""
    env = dict(os.environ)
    env.pop("DICOMPREP_SECRET", None)
    env[REQUIRE_FILE_ENV] = "1"
    return env


def check_cluster_ready(name: str) -> dict:
    """Refuse to start a cluster run that cannot work, in one sentence each."""
    profile = read_profile(profile_dir(name) / "config.yaml")
    if os.environ.get("DICOMPREP_SECRET"):
        raise DicomprepError(
            "DICOMPREP_SECRET is set, but a cluster run sends jobs with the whole environment "
            "(sbatch --export=ALL), and the scheduler keeps it where cluster administrators can read it. "
            "Unset it (`unset DICOMPREP_SECRET`), put the secret in a file only you can read "
            "(`(umask 077; echo \"$SECRET\" > ~/.dicomprep_secret)`) and pass "
            "--config deid.secret_file=~/.dicomprep_secret."
        )
    executor = str(profile.get("executor", ""))
    if executor in EXECUTORS:
        module, commands = EXECUTORS[executor]
        if importlib.util.find_spec(module) is None:
            raise DicomprepError(
                f"--cluster {name}: the Snakemake {executor} executor plugin is not installed; "
                f"install it with `pip install 'dicomprep[{executor}]'` (the pinned version) and start again."
            )
        missing = [c for c in commands if shutil.which(c) is None]
        if missing:
            raise DicomprepError(
                f"--cluster {name}: {', '.join(missing)} not found on PATH; run dicomprep on a submit "
                f"host of your {executor.upper()} cluster (where `sinfo` lists the partitions)."
            )
    return profile


def _parse_pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise DicomprepError(f"{what} {item!r}: write NAME=VALUE (e.g. mem_mb=8000).")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value.strip())  # numbers stay numbers (mem_mb=8000)
        out[key.strip()] = parsed if isinstance(parsed, (int, float)) else value.strip()
    return out


def split_mapping_args(args: list[str]) -> tuple[dict, list[str]]:
    """Take ``--default-resources``/``--resources`` NAME=VALUE lists out of
    Snakemake's arguments, so they can be merged into the profile."""
    taken: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if key in ("default-resources", "resources"):
            values = [arg.split("=", 1)[1]] if "=" in arg else []
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            taken.setdefault(key, {}).update(_parse_pairs(values, f"--{key}"))
            continue
        rest.append(arg)
        i += 1
    return taken, rest


def merge_profile(base: dict, *overlays: dict) -> dict:
    """Overlay profile dicts: mapping keys merge per entry, others replace."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for overlay in overlays:
        for key, value in (overlay or {}).items():
            if key in MAPPING_KEYS and isinstance(value, dict):
                merged[key] = {**(merged.get(key) or {}), **value}
            elif key in NESTED_KEYS and isinstance(value, dict):
                target = {r: dict(v) for r, v in (merged.get(key) or {}).items()}
                for rule, res in value.items():
                    target[rule] = {**target.get(rule, {}), **(res or {})}
                merged[key] = target
            else:
                merged[key] = value
    return merged


def cluster_run_setup(name: str, out: Path, settings_file: str | None,
                      snakemake_args: list[str]) -> tuple[Path, list[str], dict]:
    """Write the merged profile to ``OUT/.dicomprep-profile/`` and return it,
    the remaining Snakemake arguments and the environment for Snakemake."""
    base = read_profile(profile_dir(name) / "config.yaml")
    site = {}
    if settings_file:
        path = Path(settings_file).expanduser()
        if not path.is_file():
            raise DicomprepError(f"--cluster-settings {path}: no such file.")
        site = read_profile(path)
    from_cli, rest = split_mapping_args(snakemake_args)
    merged = merge_profile(base, site, from_cli)
    target = Path(out) / ".dicomprep-profile"
    target.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by `dicomprep run --cluster {name}`: profiles/{name}/config.yaml"
              + (f" + {settings_file}" if settings_file else "")
              + (" + command-line resources" if from_cli else "") + ". Do not edit; it is rewritten.\n")
    (target / "config.yaml").write_text(header + yaml.safe_dump(merged, sort_keys=False))
    return target, rest, cluster_env()
