"""The output contract: every path under ``OUT/share/`` and ``OUT/private/``.

One home (ARCHITECTURE.md, "The output contract"): the workflow rules, the
package's writers and readers, the publish step, the verifier, ``status`` and
the report all derive their paths here. A path built elsewhere is a bug.

How a unit's files reach ``share/``::

    private/stages/<stage>/<unit>/           a stage rule's declared output (a directory)
        manifest.parquet                     one row per series: status, reason, outputs
        share/<contract path>                the files the stage made, at their share/ path
        ...                                  stage-private extras (crosswalk, counts)
    share/<contract path>                    made by the ``publish`` rule from the stage
                                             directories of the selected units (hard links)

Snakemake owns the stage directories: it removes them before a stage re-runs
and when a job fails, so a stage never sees or leaves stale files. ``publish``
makes ``share/`` equal to what the selected units' stages hold now, so a unit
or series withdrawn from the input (or de-selected) leaves ``share/`` too.

Paths accept ``unit="{unit}"`` so the rules use the same functions to build
their wildcard patterns.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: A unit's stages in chain order (Snakemake rule names in ``STAGE_RULES``).
UNIT_STAGES = ("deid", "dcm2niix", "ncct", "seg", "hdf5", "qc")
#: Stage name -> Snakemake rule name.
STAGE_RULES = {
    "deid": "deidentify",
    "dcm2niix": "convert_dcm2niix",
    "ncct": "convert_ncct",
    "seg": "decode_seg",
    "hdf5": "export_hdf5",
    "qc": "qc_unit",
}
#: Folders of share/ that hold per-unit files (published from the stages):
#: ``<tree>/<unit>/…``, and ``hdf5/<unit>.h5``.
UNIT_TREES = ("dicom", "nifti", "masks", "qc", "tables/seg")
#: Cohort-level files of share/ (written by cohort rules, never by a unit's stage).
COHORT_FILES = (
    "audit.yaml", "verification.json", "qc/report.html", "hdf5/cohort.h5",
    "tables/series.csv", "tables/series.parquet", "tables/ct_series_index.csv",
    "tables/hdf5_index.csv",
)
#: File name of a stage's manifest inside its stage directory.
MANIFEST = "manifest.parquet"


@dataclass(frozen=True)
class ShareTree:
    """Contract paths below one ``share/`` root: the real ``OUT/share`` or a
    stage directory's ``share/`` (where a stage writes before publishing)."""

    root: Path

    def dicom(self, unit: str) -> Path:
        """De-identified DICOM of a unit: ``dicom/<unit>/<series>/NNNN.dcm``."""
        return self.root / "dicom" / unit

    def nifti(self, unit: str) -> Path:
        """NIfTI, sidecars, bval/bvec, STEAM tables and CT volumes of a unit."""
        return self.root / "nifti" / unit

    def masks(self, unit: str) -> Path:
        """Per-segment masks of a unit's DICOM-SEG objects."""
        return self.root / "masks" / unit

    def hdf5(self, unit: str) -> Path:
        """The unit's HDF5 file ``hdf5/<unit>.h5``."""
        return self.root / "hdf5" / f"{unit}.h5"

    def qc(self, unit: str) -> Path:
        """The unit's QC folder: ``qc.json`` and pictures."""
        return self.root / "qc" / unit

    def seg_tables(self, unit: str) -> Path:
        """The unit's share-safe SEG inventories (CSV + JSON)."""
        return self.root / "tables" / "seg" / unit

    def qc_json(self, unit: str) -> Path:
        return self.qc(unit) / "qc.json"

    def rel(self, path: str | Path) -> str:
        """``path`` as it is written in manifests: ``share/…`` (POSIX separators)."""
        return str(PurePosixPath("share", *Path(path).relative_to(self.root).parts))


@dataclass(frozen=True)
class OutputLayout:
    """Every path of one output folder ``OUT``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- the two halves
    @property
    def share_dir(self) -> Path:
        return self.root / "share"

    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    @property
    def share(self) -> ShareTree:
        return ShareTree(self.share_dir)

    # --- private: index and selection
    @property
    def index_dir(self) -> Path:
        return self.private_dir / "index"

    @property
    def instances_table(self) -> Path:
        return self.index_dir / "instances.parquet"

    @property
    def series_table(self) -> Path:
        return self.index_dir / "series.parquet"

    @property
    def unreadable_table(self) -> Path:
        return self.index_dir / "unreadable.csv"

    @property
    def left_out_table(self) -> Path:
        return self.index_dir / "left_out.csv"

    @property
    def all_tags_parquet(self) -> Path:
        """The all-tags crawl (``dicomprep index --all-tags``): every attribute, per instance or series."""
        return self.index_dir / "all_tags.parquet"

    @property
    def all_tags_csv(self) -> Path:
        return self.index_dir / "all_tags.csv"

    @property
    def all_tags_cache(self) -> Path:
        """Per-file rows of earlier crawls, so a crawl resumes and skips unchanged files."""
        return self.index_dir / "all_tags_cache"

    @property
    def units_table(self) -> Path:
        """``private/units.csv``: one row per selected unit (the checkpoint's output)."""
        return self.private_dir / "units.csv"

    def unit_dir(self, unit: str) -> Path:
        return self.private_dir / "units" / unit

    def unit_instances(self, unit: str) -> Path:
        """The unit's instance list, rewritten by ``select`` only when it changes."""
        return self.unit_dir(unit) / "instances.parquet"

    def unit_series(self, unit: str) -> Path:
        return self.unit_dir(unit) / "series.parquet"

    # --- private: stages
    def stage_dir(self, stage: str, unit: str) -> Path:
        """A stage rule's declared output directory for one unit."""
        if stage not in UNIT_STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(UNIT_STAGES)}")
        return self.private_dir / "stages" / stage / unit

    def stage_done(self, stage: str, unit: str) -> Path:
        """The stage's completion mark, beside its directory, written last. Also a
        declared output: when a run is killed mid-stage the mark is missing, so
        Snakemake re-runs the stage (its own incomplete-marker check does not reach
        jobs added after a checkpoint)."""
        if stage not in UNIT_STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(UNIT_STAGES)}")
        return self.private_dir / "stages" / stage / f"{unit}.done"

    @staticmethod
    def stage_dir_of_mark(done: str | Path) -> Path:
        """The stage directory whose completion mark is ``done`` (what downstream
        rules are given: ``…/<stage>/<unit>.done`` → ``…/<stage>/<unit>``)."""
        path = Path(done)
        if path.suffix != ".done":
            raise ValueError(f"{path} is not a stage completion mark (…/<stage>/<unit>.done)")
        return path.with_suffix("")

    def stage_manifest(self, stage: str, unit: str) -> Path:
        return self.stage_dir(stage, unit) / MANIFEST

    def stage_share(self, stage: str, unit: str) -> ShareTree:
        """Where a stage writes its share/ files before ``publish``."""
        return ShareTree(self.stage_dir(stage, unit) / "share")

    def stage_file(self, stage: str, unit: str, rel: str) -> Path:
        """A file a stage manifest lists (``share/…``), inside the stage directory."""
        return self.stage_dir(stage, unit) / rel

    # --- private: records and logs
    @property
    def crosswalk(self) -> Path:
        return self.private_dir / "crosswalk.csv"

    @property
    def published(self) -> Path:
        """What ``publish`` put in share/: one row per file with its unit and stage."""
        return self.private_dir / "published.csv"

    @property
    def withdrawn(self) -> Path:
        """Units and files removed from share/ because the input or config no longer has them."""
        return self.private_dir / "withdrawn.csv"

    def log(self, name: str, unit: str | None = None) -> Path:
        return self.private_dir / "logs" / (f"{name}/{unit}.log" if unit else f"{name}.log")

    def benchmark(self, name: str, unit: str | None = None) -> Path:
        return self.private_dir / "benchmarks" / (f"{name}/{unit}.tsv" if unit else f"{name}.tsv")

    # --- share: cohort files
    @property
    def tables_dir(self) -> Path:
        return self.share_dir / "tables"

    @property
    def series_csv(self) -> Path:
        return self.tables_dir / "series.csv"

    @property
    def series_parquet(self) -> Path:
        return self.tables_dir / "series.parquet"

    @property
    def ct_index(self) -> Path:
        return self.tables_dir / "ct_series_index.csv"

    @property
    def hdf5_index(self) -> Path:
        return self.tables_dir / "hdf5_index.csv"

    @property
    def cohort_h5(self) -> Path:
        return self.share_dir / "hdf5" / "cohort.h5"

    @property
    def report_html(self) -> Path:
        return self.share_dir / "qc" / "report.html"

    @property
    def audit_yaml(self) -> Path:
        return self.share_dir / "audit.yaml"

    @property
    def verification_json(self) -> Path:
        return self.share_dir / "verification.json"

    @property
    def verified(self) -> Path:
        """The verify rule's declared output, written only on a pass. share/verification.json
        is written on every outcome, so it is not a declared output: Snakemake would delete
        it when the job fails, and the user needs it most then."""
        return self.private_dir / "verified.json"

    @property
    def bids_dir(self) -> Path:
        """The BIDS dataset (export.bids), rebuilt whole by the ``bids`` rule."""
        return self.share_dir / "bids"

    @property
    def bids_table(self) -> Path:
        """Series -> BIDS name or reason (private: it names series keys)."""
        return self.private_dir / "bids" / "bids.parquet"


def layout(out_dir: str | Path) -> OutputLayout:
    """The layout of output folder ``out_dir``."""
    return OutputLayout(Path(out_dir))


def unit_of_share_path(rel: str | PurePosixPath) -> str | None:
    """The unit a file under share/ belongs to (``rel`` relative to share/), or
    None for a cohort-level file. Units are ``group/sequence/subject/scan``."""
    rel = PurePosixPath(rel)
    parts = rel.parts
    if str(rel) in COHORT_FILES:
        return None
    if len(parts) == 5 and parts[0] == "hdf5" and parts[4].endswith(".h5"):
        return "/".join(parts[1:4] + (parts[4][: -len(".h5")],))
    for tree in UNIT_TREES:
        depth = len(tree.split("/"))
        if "/".join(parts[:depth]) == tree and len(parts) >= depth + 5:
            return "/".join(parts[depth: depth + 4])
    return None


def is_unit_tree_path(rel: str | PurePosixPath) -> bool:
    """Whether a path under share/ lies where unit files go (publish owns it)."""
    parts = PurePosixPath(rel).parts
    if str(PurePosixPath(rel)) in COHORT_FILES:
        return False
    if parts and parts[0] == "hdf5":
        return True
    return any("/".join(parts[: len(t.split("/"))]) == t for t in UNIT_TREES)


def layout_of(path: str | Path, rel: str) -> OutputLayout:
    """The layout of the output folder in which ``path`` is the file ``rel``
    (relative to OUT, e.g. ``private/units.csv``). Rules pass declared files,
    never the output folder itself, and the adapters find OUT from them."""
    path = Path(path)
    depth = len(PurePosixPath(rel).parts)
    if tuple(path.parts[-depth:]) != PurePosixPath(rel).parts:
        raise ValueError(f"{path} is not OUT/{rel}")
    return OutputLayout(path.parents[depth - 1])


def layout_of_stage(stage_dir: str | Path) -> OutputLayout:
    """The layout of a stage directory ``OUT/private/stages/<stage>/<unit>``."""
    path = Path(stage_dir)
    if len(path.parts) < 8 or path.parts[-7:-5] != ("private", "stages"):
        raise ValueError(f"{path} is not a stage folder OUT/private/stages/<stage>/<group>/<sequence>/<subject>/<scan>")
    return OutputLayout(path.parents[6])
