"""What the Snakefile asks the package at parse time (no snakemake import here).

* (config validation, with sentences that name the key, is :func:`dicomprep.config.validate_workflow_config`);
* the input tree's state, the index rule's rerun trigger (:func:`input_state`);
* the unit table and which stages each unit has work for (:func:`unit_stages`);
* per-stage settings fingerprints, Snakemake's params trigger (:func:`stage_settings`);
* per-stage resources sized from measurements (:data:`STAGE_RESOURCES`).

Parse-time functions are cheap: Snakemake parses the Snakefile once per
invocation, and once per job on a cluster.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .deid.pseudonym import load_secret
from .errors import ConfigError, SecretMissing

#: Per-stage resources (mem_mb, runtime in minutes, threads) from the per-rule
#: benchmarks of the demo and the shared real-data cohort (README, "Benchmarks").
#: On a cluster, memory and runtime are multiplied by the attempt number on a retry.
#: Every stage is one thread: on the 1,239-file end-to-end cohort the dcm2niix jobs
#: used 1.1-2.2 s of CPU in 1.3-2.5 s and the CT jobs 4.8-5.3 s in 5.1-5.5 s with two
#: threads reserved, so the second thread idled while it kept another unit's job waiting.
STAGE_RESOURCES: dict[str, dict[str, int]] = {
    "deid": {"mem_mb": 1000, "runtime": 20, "threads": 1},
    "dcm2niix": {"mem_mb": 2000, "runtime": 30, "threads": 1},
    "ncct": {"mem_mb": 6000, "runtime": 30, "threads": 1},
    "seg": {"mem_mb": 3000, "runtime": 30, "threads": 1},
    "hdf5": {"mem_mb": 3000, "runtime": 30, "threads": 1},
    "qc": {"mem_mb": 2000, "runtime": 20, "threads": 1},
}

def stage_resources(stage: str, *, per_attempt: bool) -> dict[str, Any]:
    """The ``resources:`` of a stage rule: ``mem_mb`` and ``runtime`` (minutes) from
    :data:`STAGE_RESOURCES`. With ``per_attempt`` (a cluster, where a job killed for
    memory or time is retried) they are functions of the attempt number; otherwise
    plain numbers, which Snakemake need not evaluate per job."""
    base = STAGE_RESOURCES[stage]
    if not per_attempt:
        return {"mem_mb": base["mem_mb"], "runtime": base["runtime"]}
    return {key: _scaled(base[key]) for key in ("mem_mb", "runtime")}


def _scaled(amount: int) -> Callable[..., int]:
    def per_attempt(wildcards: Any, attempt: int) -> int:
        return amount * attempt
    return per_attempt


#: The config sections each stage's outputs depend on (a change re-runs that stage
#: and, through its outputs, what reads them; nothing else).
STAGE_CONFIG: dict[str, tuple[str, ...]] = {
    "index": ("layout", "index"),
    "select": ("select", "anonymisation", "deid.keep_folder_names", "deid.secret_file"),
    "deid": ("anonymisation", "deid"),
    "dcm2niix": ("convert.dcm2niix", "convert.steam"),
    "ncct": ("convert.ncct",),
    "seg": ("seg",),
    "hdf5": ("export.hdf5",),
    "qc": ("qc", "convert.ncct.body_threshold_hu"),
}

#: dicom kinds (index.classify_series) each conversion stage handles.
SEG_KINDS = {"seg"}
CT_KINDS = {"ct_axial", "ct_other"}
HDF5_KINDS = {"dwi", "ct_axial", "ct_other", "mr", "pt", "nm", "localizer", "secondary_capture", "other_image"}


def check_secret(config: dict, *, demo: bool, cluster: bool = False) -> None:
    """Refuse to start without a secret (:func:`dicomprep.deid.pseudonym.load_secret`,
    which also says when the demo secret is used). On a cluster the secret must come
    from ``deid.secret_file``: the executor copies the environment into every job."""
    load_secret((config.get("deid") or {}).get("secret_file"), demo=demo, require_file=True if cluster else None)


def expose_package(out_dir: Path) -> None:
    """Put :func:`package_path` first on ``PYTHONPATH`` for the jobs this process starts."""
    entry = package_path(out_dir)
    current = os.environ.get("PYTHONPATH", "")
    if entry not in current.split(os.pathsep):
        os.environ["PYTHONPATH"] = entry + (os.pathsep + current if current else "")


def package_path(out_dir: Path) -> str:
    """A folder holding only a link to this dicomprep package, for PYTHONPATH.

    The rules' conda environments hold dicomprep's dependencies; the package
    itself comes from the workflow that runs (rules and package are one
    version). A link, not the whole site-packages, so nothing else leaks in.
    """
    pkg = Path(__file__).resolve().parent   # this module sits in the package folder
    link_dir = Path(out_dir) / ".snakemake" / "dicomprep-package"
    link = link_dir / "dicomprep"
    try:
        if not (link.is_symlink() and Path(os.readlink(link)) == pkg):
            link_dir.mkdir(parents=True, exist_ok=True)
            tmp = link_dir / f".dicomprep.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(pkg, target_is_directory=True)
            os.replace(tmp, link)
    except OSError:
        return str(pkg.parent)
    return str(link_dir)


def input_state(input_dir: Path, *, enabled: bool = True) -> str:
    """A digest of the input tree: every file's relative path, size and mtime.

    The index rule's param: Snakemake re-runs the (incremental) index when a file
    was added, removed or changed, and not otherwise. A stat walk only (100,000
    files: under a second); ``refresh_index: false`` turns it off.
    """
    if not enabled:
        return "refresh_index-off"
    root = Path(input_dir)
    if not root.is_dir():
        return "absent"
    digest = hashlib.sha256()
    stack = [root]
    rows: list[str] = []
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            rows.append(f"{folder}\0unreadable\0{exc.errno}")
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                st = entry.stat(follow_symlinks=True)
                rows.append(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                rows.append(f"{entry.path}\0broken")
    for row in sorted(rows):
        digest.update(row.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return f"{len(rows)}-{digest.hexdigest()[:24]}"


_UNITS: dict[tuple, pd.DataFrame] = {}


def read_units(path: str | Path) -> pd.DataFrame:
    """``private/units.csv``, read once per change (cached on path + mtime)."""
    path = Path(path)
    stamp = (str(path), path.stat().st_mtime_ns)
    if stamp not in _UNITS:
        _UNITS.clear()
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.attrs["stages"] = dict(zip(table["unit"], table.get("stages", pd.Series("", index=table.index))))
        _UNITS[stamp] = table
    return _UNITS[stamp]


def unit_stages(units: pd.DataFrame, unit: str) -> list[str]:
    """The stages ``unit`` has work for (``stages`` column of units.csv)."""
    stages = units.attrs.get("stages")
    if stages is None:
        stages = dict(zip(units["unit"], units["stages"]))
    text = stages.get(unit, "")
    return [s for s in text.split(";") if s]


def stages_for(kinds: set[str], config: dict) -> list[str]:
    """Which of a unit's stages have work, from its series kinds and the config
    (the select checkpoint writes them to units.csv: no CT series, no CT job)."""
    conv = config.get("convert") or {}
    stages = []
    if config.get("anonymisation", True):
        stages.append("deid")
    d = conv.get("dcm2niix") or {}
    if d.get("enabled", True) and kinds & set(d.get("kinds") or HDF5_KINDS):
        stages.append("dcm2niix")
    if (conv.get("ncct") or {}).get("enabled", True) and kinds & CT_KINDS:
        stages.append("ncct")
    if (config.get("seg") or {}).get("enabled", True) and kinds & SEG_KINDS:
        stages.append("seg")
    if ((config.get("export") or {}).get("hdf5") or {}).get("enabled", True) and kinds & HDF5_KINDS:
        stages.append("hdf5")
    if (config.get("qc") or {}).get("enabled", True):
        stages.append("qc")
    return stages


def bids_enabled(config: dict) -> bool:
    """``export.bids.enabled`` (a bare boolean is accepted too)."""
    value = (config.get("export") or {}).get("bids")
    return bool(value.get("enabled")) if isinstance(value, dict) else bool(value)


def _dotted(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def stage_settings(config: dict, stage: str) -> str:
    """Fingerprint of the settings ``stage`` depends on (``overwrite: true``
    adds the time, so every stage re-runs); for the index also the reader and
    table versions of :mod:`dicomprep.index`, so an upgraded reader re-indexes."""
    values = {key: _dotted(config, key) for key in STAGE_CONFIG[stage]}
    if stage == "index":  # a reader fix (a new READER_VERSION) re-reads the files it may read differently
        from .index import INDEX_VERSION, READER_VERSION
        values["versions"] = [INDEX_VERSION, READER_VERSION]
    text = json.dumps(values, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if stage in ("select", "deid"):
        digest += "-" + secret_fingerprint(config)
    return f"{digest}-{time.time_ns()}" if config.get("overwrite") else digest


def secret_fingerprint(config: dict) -> str:
    """A keyed digest that changes with the secret (never the secret itself):
    a new secret gives new pseudonyms, so selection and de-identification re-run."""
    demo = str(config.get("input_dir")) == "demo"
    try:
        secret = load_secret((config.get("deid") or {}).get("secret_file"), demo=demo)
    except (SecretMissing, ConfigError, TypeError):
        return "nosecret"
    return hmac.new(secret, b"dicomprep settings fingerprint", hashlib.sha256).hexdigest()[:12]
