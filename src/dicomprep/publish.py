"""Put the selected units' stage outputs in ``share/``, and nothing else.

Each stage rule writes its files into its own directory
``private/stages/<stage>/<unit>/share/<contract path>`` (see
:mod:`dicomprep.paths`). :func:`publish_share` makes the per-unit part of
``share/`` (``dicom/``, ``nifti/``, ``masks/``, ``hdf5/<unit>.h5``, ``qc/<unit>/``,
``tables/seg/<unit>/``) equal to what those directories hold now:

* every staged file is hard-linked into place (copied where links are not
  possible), atomically: a link under a temporary name, then a rename;
* every other file in those folders is removed: outputs of a unit or series
  the input no longer has (or the config no longer selects), and leftovers of
  a stage that now makes different files. What was removed is appended to
  ``private/withdrawn.csv`` (unit, file, when) and summarised in the audit.

Cohort-level files (tables, report, audit, verification, cohort.h5) belong
to their own rules and are never touched here.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import shutil
from pathlib import Path, PurePosixPath

import pandas as pd

from .dicomio import atomic_path
from .errors import DicomprepError
from .logs import get_logger
from .paths import OutputLayout, is_unit_tree_path, unit_of_share_path

PUBLISHED_COLUMNS = ["file", "unit", "stage"]
WITHDRAWN_COLUMNS = ["when", "unit", "file"]


def staged_files(stage_dirs: list[Path], private_dir: Path) -> dict[str, tuple[Path, str, str]]:
    """``{share-relative path: (staged file, unit, stage)}`` over the stage directories."""
    wanted: dict[str, tuple[Path, str, str]] = {}
    stages_root = private_dir / "stages"
    for stage_dir in stage_dirs:
        rel_dir = stage_dir.relative_to(stages_root)
        stage, unit = rel_dir.parts[0], "/".join(rel_dir.parts[1:])
        share = stage_dir / "share"
        if not share.is_dir():
            continue
        for folder, _dirs, files in os.walk(share):
            for name in files:
                src = Path(folder) / name
                rel = str(PurePosixPath(*src.relative_to(share).parts))
                if rel in wanted:
                    raise DicomprepError(
                        f"stages {wanted[rel][2]} and {stage} of unit {unit} both wrote share/{rel}; "
                        "each file of share/ must come from one stage (a naming clash: report it)")
                wanted[rel] = (src, unit, stage)
    return wanted


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _place(src: Path, dest: Path) -> None:
    """``dest`` becomes ``src`` (a hard link, else a copy), atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.publish-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def _unit_tree_files(share_dir: Path) -> list[str]:
    out = []
    if not share_dir.is_dir():
        return out
    for folder, _dirs, files in os.walk(share_dir):
        for name in files:
            rel = str(PurePosixPath(*(Path(folder) / name).relative_to(share_dir).parts))
            if is_unit_tree_path(rel):
                out.append(rel)
    return out


def _remove_empty_dirs(share_dir: Path) -> None:
    for folder, dirs, files in os.walk(share_dir, topdown=False):
        path = Path(folder)
        if path != share_dir and not any(path.iterdir()):
            path.rmdir()


def publish_share(lay: OutputLayout, stage_dirs: list[Path], *, log=None, keep_bids: bool = True) -> pd.DataFrame:
    """Make share/'s unit files equal to the staged ones; write ``private/published.csv``.
    With ``keep_bids`` false (export.bids off), an earlier ``share/bids/`` goes too."""
    logger = log or get_logger("publish")
    share_dir = lay.share_dir
    if not keep_bids and lay.bids_dir.is_dir():
        shutil.rmtree(lay.bids_dir)
        logger.info("export.bids is off: removed the earlier share/bids/")
    wanted = staged_files(stage_dirs, lay.private_dir)
    placed = 0
    for rel, (src, _unit, _stage) in sorted(wanted.items()):
        dest = share_dir / rel
        if not _same_file(src, dest):
            _place(src, dest)
            placed += 1
    stale = sorted(rel for rel in _unit_tree_files(share_dir) if rel not in wanted)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    if stale:
        new_file = not lay.withdrawn.is_file()
        lay.withdrawn.parent.mkdir(parents=True, exist_ok=True)
        with open(lay.withdrawn, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new_file:
                writer.writerow(WITHDRAWN_COLUMNS)
            for rel in stale:
                writer.writerow([now, unit_of_share_path(rel) or "", rel])
        for rel in stale:
            (share_dir / rel).unlink(missing_ok=True)
        _remove_empty_dirs(share_dir)
        units = sorted({unit_of_share_path(r) or "?" for r in stale})
        logger.info("withdrew %d file(s) of %d unit(s) no longer selected or no longer made: %s",
                    len(stale), len(units), ", ".join(units[:10]) + (" ..." if len(units) > 10 else ""))
    table = pd.DataFrame([(rel, unit, stage) for rel, (_src, unit, stage) in sorted(wanted.items())],
                         columns=PUBLISHED_COLUMNS)
    with atomic_path(lay.published) as tmp:
        table.to_csv(tmp, index=False)
    logger.info("share/: %d unit file(s) from %d stage folder(s); %d placed, %d withdrawn",
                len(table), len(stage_dirs), placed, len(stale))
    return table


def unexpected_share_files(lay: OutputLayout) -> list[str]:
    """Unit files under share/ that ``published.csv`` does not list (the verifier
    fails on them: every file must belong to a selected unit)."""
    if not lay.published.is_file():
        return []
    listed = set(pd.read_csv(lay.published, dtype=str, keep_default_na=False)["file"])
    return [rel for rel in _unit_tree_files(lay.share_dir) if rel not in listed]
