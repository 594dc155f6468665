"""Workflow adapters: one function per Snakemake rule, and nothing else.

The thin layer between the rules (``workflow/rules/*.smk``, via the one-line
``scripts/``) and the package. Each function takes exactly the rule's named
inputs, outputs, params, ``log``, ``threads`` and ``config`` as keyword
arguments (see :func:`dicomprep.entry.run`), so a misspelt name is an error.
It reads the unit's tables, calls the domain functions, and writes exactly
its rule's declared outputs; paths come from :mod:`dicomprep.paths`.

Imports: this module is imported by every job (``entry.run``), so the domain
modules an adapter calls (converters, exporters, QC, de-identification, the
demo and the index) are imported inside that adapter: a job loads only its own
stage's dependencies (SimpleITK, nibabel, scipy, highdicom, h5py ...), not every
stage's. Light modules every job can afford are imported here.

Outcomes: a data problem (a series that cannot be converted) is a reason row
in the stage's manifest and the job succeeds. An environment problem (disk
full, no permission, a missing tool, a killed helper) raises, the job fails,
Snakemake removes the stage directory, and the next run redoes it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .deid.pseudonym import secret_for_config
from .dicomio import atomic_path, write_text
from .logs import get_logger
from .paths import MANIFEST, OutputLayout, layout_of, layout_of_stage
from .publish import publish_share
from .select import build_units
from .units import load_unit_instances, load_unit_series, unit_sources
from .workflow_support import bids_enabled, read_units, unit_stages

if TYPE_CHECKING:
    from .index import IndexResult


def _write_manifest(table: pd.DataFrame, path: Path) -> None:
    """A stage's manifest, atomically."""
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def _mark_done(done: str, stage_dir: Path) -> None:
    """The stage's completion mark (a declared output), written last."""
    write_text(Path(done), f"{stage_dir.name}\n")


def _as_list(value: str | list | None) -> list[str]:
    """A named input that is zero or more paths, as a list (Snakemake gives one path
    as a string)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _begin_stage(stage_dir: str) -> Path:
    """The stage's output directory, fresh (Snakemake removed any earlier one)."""
    path = Path(stage_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unit_inputs(lay: OutputLayout, unit: str, anonymisation: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The unit's series rows and its instances with ``source_path`` (what converters read)."""
    return load_unit_series(lay.root, unit), unit_sources(lay.root, unit, anonymisation)


# --- index and selection ------------------------------------------------------------

def demo_input(*, flag: str, log: str | None, config: dict, threads: int) -> None:
    """Rule ``demo_input``: the synthetic demo cohort (beside its flag file), then
    the flag, atomically and last (a run killed mid-way leaves no flag)."""
    from .demo import make_demo  # lazy: module docstring

    logger = get_logger("demo", log)
    flag_path, seed = Path(flag), 0
    out_dir = flag_path.parent
    if flag_path.exists():
        flag_path.unlink()
    manifest = make_demo(out_dir, seed=seed)
    n_files = sum(1 for p in out_dir.rglob("*") if p.is_file())
    logger.info("demo cohort written to %s: %d files (%d cDTI series, %d CT exams, 1 XNAT session)",
                out_dir, n_files, len(manifest["cdti"]), len(manifest["ct"]))
    write_text(flag_path, f"demo cohort, seed {seed}\n")


def index(*, flag: list, instances: str, series: str, unreadable: str, input_dir: str,
          input_state: str, settings: str, log: str | None, config: dict, threads: int) -> IndexResult:
    """Rule ``index``: discovery + the incremental, cached index (``input_state`` is
    the rerun trigger only): ``config["layout"]``, ``config["index"]["workers"]``
    (capped by the rule's threads), and the all-tags crawl when
    ``config["index"]["all_tags"]``."""
    from .crawl import write_crawl  # lazy: module docstring
    from .index import build_index

    icfg = config.get("index") or {}
    workers = max(1, min(int(icfg.get("workers", 1) or 1), int(threads or 1)))
    out_dir = layout_of(instances, "private/index/instances.parquet").root
    logger = get_logger("index", log, stderr=log is None)
    res = build_index(input_dir, out_dir, layout=config.get("layout", "auto"), workers=workers, log=logger)
    if icfg.get("all_tags"):
        write_crawl(out_dir, per=icfg.get("all_tags_per", "instance"), log=logger, workers=workers)
    return res


def select_units(*, instances: str, series: str, units: str, demo: bool, settings: str,
                 log: str | None, config: dict, threads: int) -> None:
    """Checkpoint ``select_units``: units.csv (with each unit's stages) and per-unit lists."""
    build_units(layout_of(units, "private/units.csv").root, config, demo=demo, log=get_logger("select", log))


# --- a unit's stages ----------------------------------------------------------------

def deidentify(*, instances: str, stage: str, done: str, unit: str, demo: bool, settings: str,
               log: str | None, config: dict, threads: int) -> None:
    """Rule ``deidentify``: de-identified copies (``share/dicom/<unit>/``), the
    manifest (``output_path`` relative to the stage directory), counts and crosswalk."""
    from .deid.dataset import make_deidentifier  # lazy: module docstring
    from .deid.unit import deidentify_unit

    logger = get_logger("deid", log)
    lay = layout_of_stage(stage)
    stage_dir = _begin_stage(stage)
    share = lay.stage_share("deid", unit)
    deid_cfg = config.get("deid") or {}
    secret = secret_for_config(config, demo=demo)
    unit_instances = load_unit_instances(lay.root, unit)
    fallback = str(unit_instances["orig_subject"].iloc[0]) if "orig_subject" in unit_instances and len(unit_instances) else ""
    manifest, counts, crosswalk = deidentify_unit(
        unit_instances, share_dir=share.dicom(unit), deid=make_deidentifier(config, secret),
        drop_cfg=deid_cfg.get("drop_series"), log=logger, fallback_key=fallback)
    manifest["output_path"] = [share.rel(p) if str(p) else "" for p in manifest["output_path"].fillna("")]
    with atomic_path(stage_dir / "crosswalk.csv") as tmp:
        crosswalk.to_csv(tmp, index=False)
    write_text(stage_dir / "counts.json", json.dumps(counts, indent=1, sort_keys=True) + "\n")
    _write_manifest(manifest, stage_dir / MANIFEST)
    _mark_done(done, stage_dir)
    logger.info("unit %s: %d written, %d dropped, %d quarantined", unit, counts["written"],
                counts["dropped"], counts["quarantined"])


def convert_dcm2niix(*, source: str, stage: str, done: str, unit: str, settings: str,
                     log: str | None, config: dict, threads: int) -> None:
    """Rule ``convert_dcm2niix``: NIfTI + scrubbed sidecars (+ bval/bvec, STEAM tables)."""
    from .convert.dcm2niix import convert_unit  # lazy: module docstring

    lay = layout_of_stage(stage)
    stage_dir = _begin_stage(stage)
    series, sources = _unit_inputs(lay, unit, bool(config.get("anonymisation", True)))
    table = convert_unit(unit=unit, series=series, sources=sources, share=lay.stage_share("dcm2niix", unit),
                         config=config, log=log, threads=threads)
    _write_manifest(table, stage_dir / MANIFEST)
    _mark_done(done, stage_dir)


def convert_ncct(*, source: str, stage: str, done: str, unit: str, demo: bool, settings: str,
                 log: str | None, config: dict, threads: int) -> None:
    """Rule ``convert_ncct``: axial non-contrast CT volumes in HU (+ body masks), and
    each volume as a derived CT series beside its de-identified source."""
    from .convert.ncct import convert_unit  # lazy: module docstring
    from .export.dicom_series import SeriesWriteError, ct_series_for_unit  # lazy: module docstring

    logger = get_logger("convert.ncct", log)
    lay = layout_of_stage(stage)
    stage_dir = _begin_stage(stage)
    anonymisation = bool(config.get("anonymisation", True))
    series, sources = _unit_inputs(lay, unit, anonymisation)
    share = lay.stage_share("ncct", unit)
    table = convert_unit(unit=unit, series=series, sources=sources, share=share, config=config, log=log,
                         threads=threads)
    if anonymisation and table["status"].isin(["converted", "partial"]).any():
        try:
            written = ct_series_for_unit(table, stage_dir, unit, secret=secret_for_config(config, demo=demo), config=config,
                                         template_dir=lay.stage_share("deid", unit).dicom(unit))
        except SeriesWriteError as exc:
            logger.warning("%s: no derived CT series: %s", unit, exc)
            written = []
        folders = {Path(w.paths[0]).parent.name[: -len("_ct")]: Path(w.paths[0]).parent for w in written if w.paths}
        table["dicom_series"] = [share.rel(folders[sid]) if sid in folders else "" for sid in table["series_id"]]
    _write_manifest(table, stage_dir / MANIFEST)
    _mark_done(done, stage_dir)


def decode_seg(*, source: str, stage: str, done: str, unit: str, demo: bool, settings: str,
               log: str | None, config: dict, threads: int) -> None:
    """Rule ``decode_seg``: one mask per DICOM-SEG segment on its source grid, inventories."""
    from .convert.seg_unit import convert_unit  # lazy: module docstring

    lay = layout_of_stage(stage)
    stage_dir = _begin_stage(stage)
    anonymisation = bool(config.get("anonymisation", True))
    sources = unit_sources(lay.root, unit, anonymisation)
    unit_instances = deid_manifest = None   # to explain a source series de-identification dropped
    if anonymisation:
        unit_instances = load_unit_instances(lay.root, unit)
        deid_manifest = pd.read_parquet(lay.stage_manifest("deid", unit))
    share = lay.stage_share("seg", unit)
    table = convert_unit(unit=unit, config=config, instances=sources, share=share,
                         private_dir=stage_dir / "inventory", log=log, demo=demo,
                         unit_instances=unit_instances, deid_manifest=deid_manifest)
    if anonymisation and (table["status"] == "converted").any():
        table = _segmentations_as_dicom(table, lay, unit, config, demo, log)
    _write_manifest(table, stage_dir / MANIFEST)
    _mark_done(done, stage_dir)


def _segmentations_as_dicom(table: pd.DataFrame, lay: OutputLayout, unit: str, config: dict, demo: bool,
                            log: str | None) -> pd.DataFrame:
    """The unit's masks back as DICOM-SEG beside their de-identified sources (one
    row each in the manifest; a missing source is a reason row)."""
    from .convert.seg_unit import manifest_row, manifest_table  # lazy: module docstring
    from .export.dicom_seg import SegWriteError, seg_for_unit  # lazy: module docstring

    logger = get_logger("seg", log)
    share = lay.stage_share("seg", unit)
    rows = []
    try:
        written = seg_for_unit(share.masks(unit), lay.stage_share("deid", unit).dicom(unit), share.dicom(unit),
                               secret=secret_for_config(config, demo=demo), config=config)
        rows = [manifest_row(series_key="", series_id=w.path.parent.name, status="converted", segmentation="DICOM-SEG",
                     reason="masks written back as DICOM-SEG", outputs=share.rel(w.path)) for w in written]
    except SegWriteError as exc:
        logger.warning("%s: masks not written as DICOM-SEG: %s", unit, exc)
        rows = [manifest_row(series_key="", status="failed", segmentation="DICOM-SEG", reason=str(exc))]
    return pd.concat([table, manifest_table(rows)], ignore_index=True) if rows else table


def export_hdf5(*, source: str, stage: str, done: str, unit: str, settings: str,
                log: str | None, config: dict, threads: int) -> None:
    """Rule ``export_hdf5``: the unit's HDF5 file of sorted arrays with RAS affines."""
    from .export.hdf5 import export_unit  # lazy: module docstring

    lay = layout_of_stage(stage)
    stage_dir = _begin_stage(stage)
    series, sources = _unit_inputs(lay, unit, bool(config.get("anonymisation", True)))
    table = export_unit(unit=unit, series=series, sources=sources, share=lay.stage_share("hdf5", unit),
                        config=config, log=log)
    _write_manifest(table, stage_dir / MANIFEST)
    _mark_done(done, stage_dir)


def qc_unit(*, source: str, dcm2niix: list, ncct: list, seg: list, stage: str, done: str, unit: str,
            settings: str, log: str | None, config: dict, threads: int) -> None:
    """Rule ``qc_unit``: per-series checks and pictures (``share/qc/<unit>/``). The
    converter inputs are the unit's stage completion marks (empty: no such stage)."""
    from .qc.checks import mask_pictures, unit_qc  # lazy: module docstring

    logger = get_logger("qc", log)
    lay = layout_of_stage(stage)
    _begin_stage(stage)
    share = lay.stage_share("qc", unit)
    stage_dirs = {name: OutputLayout.stage_dir_of_mark(_as_list(marks)[0]) for name, marks in
                  (("dcm2niix", dcm2niix), ("ncct", ncct), ("seg", seg)) if marks}
    if config.get("anonymisation", True):
        stage_dirs = {"deid": lay.stage_dir("deid", unit), **stage_dirs}
    pics = bool((config.get("qc") or {}).get("thumbnails", True))
    threshold = float(((config.get("convert") or {}).get("ncct") or {}).get("body_threshold_hu", -200))
    result = unit_qc(unit=unit, series=load_unit_series(lay.root, unit), stage_dirs=stage_dirs,
                     share=share, pictures_on=pics, body_threshold=threshold, log=logger)
    if pics:
        mask_pictures(result, stage_dirs, share, unit)
    write_text(share.qc_json(unit), json.dumps(result, indent=1, default=str))
    _mark_done(done, Path(stage))


# --- cohort -----------------------------------------------------------------------------

def _share_changes(lay: OutputLayout) -> OutputLayout:
    """Before a cohort step writes to share/: the last verdict there no longer describes
    it, so share/verification.json says so until the ``verify`` rule writes a new one
    (a run killed in between must not leave a pass beside files nobody checked)."""
    if lay.verification_json.is_file():
        write_text(lay.verification_json, json.dumps(
            {"status": "not verified", "reason": "share/ changed after the last leak scan; the verify step of "
             "`dicomprep run` (or `dicomprep verify OUT`) writes the verdict"}, indent=2) + "\n")
    return lay


def publish(*, stages: list, units: str, published: str, log: str | None, config: dict,
            threads: int) -> None:
    """Rule ``publish``: share/ holds the selected units' stage outputs, and no other unit file."""
    publish_share(_share_changes(layout_of(published, "private/published.csv")),
                  [OutputLayout.stage_dir_of_mark(mark) for mark in _as_list(stages)],
                  log=get_logger("publish", log), keep_bids=bids_enabled(config))


def audit(*, published: str, audit: str, crosswalk: str, demo: bool,
          log: str | None, config: dict, threads: int) -> None:
    """Rule ``audit``: share/audit.yaml (what was done, withdrawn units) + private/crosswalk.csv,
    from every selected unit's de-identification stage (published before this runs)."""
    from .deid.audit import write_audit

    lay = _share_changes(layout_of(published, "private/published.csv"))
    table = read_units(lay.units_table)
    deid_dirs = [lay.stage_dir("deid", u) for u in table["unit"] if "deid" in unit_stages(table, u)]
    write_audit(config, deid_dirs, audit_path=Path(audit), crosswalk_path=Path(crosswalk),
                withdrawn_path=lay.withdrawn, demo=demo, log=get_logger("audit", log))


def share_tables(*, published: str, series: str, series_parquet: str, ct_index: str,
                 log: str | None, config: dict, threads: int) -> None:
    """Rule ``share_tables``: share/tables/series.csv + .parquet, ct_series_index.csv."""
    from .tables import write_share_tables  # lazy: module docstring

    write_share_tables(_share_changes(layout_of(published, "private/published.csv")).root,
                       log=get_logger("tables", log))


def hdf5_cohort(*, published: str, cohort: str, index: str, log: str | None,
                config: dict, threads: int) -> None:
    """Rule ``hdf5_cohort``: share/hdf5/cohort.h5 and share/tables/hdf5_index.csv."""
    from .export.hdf5 import write_cohort_files  # lazy: module docstring

    lay = _share_changes(layout_of(published, "private/published.csv"))
    unit_files = [lay.share.hdf5(u) for u in _published_units(lay, "hdf5")]
    write_cohort_files(cohort, index, unit_files, lay.share_dir, log=log)


def _published_units(lay: OutputLayout, stage: str) -> list[str]:
    table = pd.read_csv(lay.published, dtype=str, keep_default_na=False)
    return sorted(set(table.loc[table["stage"] == stage, "unit"]))


def bids(*, published: str, table: str, log: str | None, config: dict,
         threads: int) -> None:
    """Rule ``bids``: share/bids/ (a BIDS dataset of the converted files, rebuilt
    whole) and its private series table."""
    from .export.bids import build_cohort_bids  # lazy: module docstring

    lay = _share_changes(layout_of(published, "private/published.csv"))
    build_cohort_bids(lay.root, config, log=get_logger("bids", log), table_path=table)


def report(*, published: str, series: str, audit: str, cohort: list, bids: list, html: str,
           log: str | None, config: dict, threads: int) -> None:
    """Rule ``report``: share/qc/report.html (with a leak pre-scan of share/, which holds
    what the rule's inputs made: every cohort file but the verdict and this page)."""
    from .qc.report import report_page  # lazy: module docstring

    lay = _share_changes(layout_of(published, "private/published.csv"))
    report_page(lay, log=get_logger("report", log), config=config, workers=threads)


def verify(*, share: list, verified: str, enforce: bool, log: str | None,
           config: dict, threads: int) -> Any:
    """Rule ``verify``: share/verification.json on every outcome; a leak, or a unit
    file of share/ that no selected unit made, fails the run. ``verified`` (private)
    is written only on a pass."""
    from .verify.share import check_share
    from .errors import DicomprepError
    from .publish import unexpected_share_files

    lay = layout_of(verified, "private/verified.json")
    result = lay.verification_json
    stray = unexpected_share_files(lay)
    try:   # a hit raises DicomprepError: entry.run prints its sentence (what, where, the fix)
        outcome = check_share(lay.root, result_path=result, log=log, enforce=enforce, config=config,
                              workers=threads)
    finally:
        if stray:
            doc = json.loads(result.read_text()) if result.is_file() else {}
            doc.update(status="fail", not_from_selected_units=stray)
            write_text(result, json.dumps(doc, indent=2) + "\n")
    if stray:
        raise DicomprepError(
            f"{len(stray)} file(s) in share/ belong to no selected unit (e.g. share/{stray[0]}): they were "
            "not made by this run's stages. Remove them (or run again so that the publish step does) "
            "before sharing; see share/verification.json.")
    write_text(Path(verified), json.dumps({"status": outcome.get("status", "pass")}) + "\n")
    return outcome
