"""The ``dicomprep`` command.

    dicomprep demo DIR                          write the synthetic demo cohort
    dicomprep run INPUT|demo OUTPUT --cores N   run the whole workflow (Snakemake)
    dicomprep index INPUT OUTPUT [--all-tags]   discovery + index only
    dicomprep ls OUT [patients|studies|series|instances] [--where K=V ...]
    dicomprep export OUT SERIES --format nifti|npy|png|csv|dicom --dest DIR
    dicomprep bids OUT [--config KEY=VALUE ...] share/bids/, a BIDS dataset of the dcm2niix outputs
    dicomprep verify OUT                        leak scan of OUT/share
    dicomprep status OUT                        what is done and what failed

User errors end in one sentence and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .version import __version__
from .deid.pseudonym import load_secret
from .errors import DicomprepError
from .runlock import RunLock

# A command's heavier modules (config and cluster: jsonschema; index, browse, export, bids,
# verify: pandas, pydicom, nibabel ...) are imported inside that command, so
# the command line starts quickly (`dicomprep --help`, `status`).


def _cores(value: str) -> str:
    """``--cores``: a positive whole number or ``all`` (as Snakemake takes it), checked
    before anything is created."""
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a number of cores: give a whole number such as 4, or `all`")


def _parse_overrides(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DicomprepError(f"--config {item!r}: write KEY=VALUE (e.g. convert.ncct.spacing_mm=1.0).")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


#: Snakemake's own config flags; after ``--`` they would reach Snakemake, whose
#: parser stops with a traceback on dotted keys, so dicomprep takes them over.
SNAKEMAKE_CONFIG_FLAGS = ("--config", "-C")


def split_passthrough_config(args: list[str]) -> tuple[list[str], list[str]]:
    """Split arguments meant for Snakemake into ``(KEY=VALUE items of --config/-C, the rest)``.

    ``dicomprep run IN OUT -- --config a.b=1 c=2 --dry-run`` gives
    ``(["a.b=1", "c=2"], ["--dry-run"])``; ``--config=a=1`` works too. The items
    join dicomprep's own ``--config`` overrides, so they are validated like them.
    """
    items: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in SNAKEMAKE_CONFIG_FLAGS or arg.startswith("--config="):
            given = [arg.split("=", 1)[1]] if arg.startswith("--config=") else []
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                given.append(args[i])
                i += 1
            bad = [g for g in given if "=" not in g]
            if not given or bad:
                raise DicomprepError(
                    f"{arg}: expected KEY=VALUE pairs{' but got ' + repr(bad[0]) if bad else ''}. Write them "
                    "as `dicomprep run INPUT OUTPUT --config convert.ncct.spacing_mm=1.0 anonymisation=true` "
                    "(before any `--`).")
            items.extend(given)
            continue
        rest.append(arg)
        i += 1
    return items, rest


def cmd_demo(args) -> int:
    from .demo import make_demo  # lazy: see the note above

    info = make_demo(Path(args.dir))
    print(f"demo cohort written to {args.dir} ({info.get('n_files', '?')} files)")
    return 0


def cmd_run(args) -> int:
    from .cluster import check_cluster_ready, cluster_env, cluster_run_setup, is_cluster_profile  # lazy: see above
    from .config import load_config, set_dotted, workflow_root

    root = workflow_root()
    out = Path(args.output).resolve()
    inp = args.input if args.input == "demo" else str(Path(args.input).resolve())
    passed, args.snakemake_args = split_passthrough_config(args.snakemake_args or [])
    overrides = _parse_overrides(list(args.config or []) + passed)
    overrides.update({"input_dir": inp, "output_dir": str(out)})
    configfile = Path(args.configfile).resolve() if args.configfile else root / "config" / "config.yaml"
    config = load_config(configfile, overrides)  # refuse a bad config before any work
    if args.cluster and args.profile:
        raise DicomprepError("--cluster and --profile both name a profile; give one of them.")
    if args.cluster_settings and not args.cluster:
        raise DicomprepError("--cluster-settings needs --cluster (e.g. --cluster slurm).")
    # A cluster profile given as --profile gets the same checks (not the merge).
    on_cluster = bool(args.cluster) or (bool(args.profile) and is_cluster_profile(args.profile))
    if on_cluster:
        check_cluster_ready(args.cluster or str(Path(args.profile).resolve()))
    if config["anonymisation"]:
        load_secret(config["deid"]["secret_file"], demo=inp == "demo", require_file=on_cluster)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out) as lock:  # refuses a live run on OUT before touching any of its files
        nested: dict = {}
        for key, value in overrides.items():
            set_dotted(nested, key, value)
        override_file = lock.private_file("overrides.yaml")
        override_file.write_text(yaml.safe_dump(nested, sort_keys=True))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"),
               "--directory", str(out), "--cores", str(args.cores),
               "--configfile", str(configfile), str(override_file)]
        env = None
        if args.cluster:
            profile_dir, rest, env = cluster_run_setup(args.cluster, out, args.cluster_settings,
                                                       args.snakemake_args or [])
            args.snakemake_args = rest
            cmd += ["--workflow-profile", str(profile_dir)]
        elif args.profile:
            cmd += ["--workflow-profile", str(Path(args.profile).resolve())]
            if on_cluster:
                env = cluster_env()
        else:
            cmd += ["--workflow-profile", str(root / "profiles" / "default")]
        if lock.stale_snakemake_lock():
            print(f"dicomprep: a previous run on {out} was interrupted (its lock is stale: no process holds it); "
                  "unlocking and resuming it.", file=sys.stderr)
            subprocess.call(cmd + ["--unlock"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        if args.dry_run:
            cmd.append("-n")
        cmd += args.snakemake_args or []
        print("running:", " ".join(cmd), file=sys.stderr)
        return subprocess.call(cmd, env=env)


def cmd_index(args) -> int:
    from .crawl import write_crawl  # lazy: see the note above
    from .index import build_index

    out = Path(args.output)
    inp = Path(args.input)
    if not inp.is_dir():
        raise DicomprepError(f"input {inp} is not a folder of DICOM files.")
    result = build_index(inp, out, layout=args.layout, workers=args.workers)
    if args.all_tags:
        write_crawl(out, per=args.per, workers=args.workers)
    print(result.summary() if hasattr(result, "summary") else f"index written to {out}/private/index")
    return 0


def cmd_ls(args) -> int:
    import pandas as pd  # lazy: see the note above

    from . import open_index
    from .browse import parse_where

    idx = open_index(args.output)
    table = idx.table(args.level, **parse_where(args.where))
    cols = args.columns.split(",") if args.columns else None
    if cols:
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise DicomprepError(f"--columns: no column {', '.join(missing)}; available: {', '.join(table.columns)}")
        table = table[cols]
    elif args.level in ("series", "instances"):
        default = ["orig_unit", "series_key", "SeriesNumber", "Modality", "kind", "n_instances", "SeriesDescription"]
        if args.level == "instances":
            default = ["relpath", "series_key", "InstanceNumber", "Modality", "SOPClassUID"]
        table = table[[c for c in default if c in table.columns]]
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            print(table.to_string(index=False))
    return 0


def cmd_export(args) -> int:
    from . import open_index  # lazy: see the note above
    from .config import load_config
    from .export.files import export_series

    idx = open_index(args.output)
    paths = idx.series_paths(args.series)
    sortby = args.sortby.split(",") if args.sortby else None
    config = secret = None
    if args.deidentify:
        config = load_config(Path(args.configfile) if args.configfile else None)
        secret = load_secret(config["deid"]["secret_file"])
    written = export_series(paths, Path(args.dest), args.format, sortby=sortby,
                            deidentify=args.deidentify, config=config, secret=secret)
    for p in written if isinstance(written, (list, tuple)) else [written]:
        print(p)
    return 0


def cmd_bids(args) -> int:
    from .config import load_config  # lazy: see the note above
    from .export.bids import build_cohort_bids

    config = load_config(args.configfile, overrides=_parse_overrides(args.config))
    table = build_cohort_bids(Path(args.output), config)
    counts = table["status"].value_counts().to_dict()
    print(f"{Path(args.output) / 'share' / 'bids'}: {counts.get('bids', 0)} images named, "
          f"{counts.get('derivative', 0)} under derivatives/dicomprep, {counts.get('skipped', 0)} left out "
          f"(reasons in {Path(args.output) / 'private' / 'bids' / 'bids.parquet'}); "
          "run `dicomprep verify` before sharing")
    return 0


def cmd_verify(args) -> int:
    from .verify.share import verify_command

    return verify_command(Path(args.output), workers=args.workers)


def cmd_status(args) -> int:
    from .qc.status import status_command  # lazy: see the note above

    return status_command(Path(args.output))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomprep", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"dicomprep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="write the synthetic demo cohort into DIR")
    s.add_argument("dir")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="run the workflow (Snakemake) from INPUT into OUTPUT")
    s.add_argument("input", help="folder of DICOM, or `demo`")
    s.add_argument("output")
    s.add_argument("--cores", default="2", type=_cores,
                   help="cores to use (a number, or `all`); on a cluster, the cores of each job")
    s.add_argument("--configfile", help="YAML config (default: config/config.yaml of the workflow)")
    s.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="override config keys (dotted)")
    s.add_argument("--profile", help="Snakemake profile folder (e.g. profiles/slurm)")
    s.add_argument("--cluster", metavar="NAME|DIR",
                   help="run on a cluster through the workflow's profile NAME (`slurm`) or a profile folder; "
                        "the secret must then come from deid.secret_file (README, 'Run on a cluster')")
    s.add_argument("--cluster-settings", metavar="FILE",
                   help="YAML of site values (e.g. default-resources: {slurm_account: lab, "
                        "slurm_partition: short}) merged key by key over the cluster profile")
    s.add_argument("-n", "--dry-run", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("index", help="discover and index INPUT into OUTPUT/private/index")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--layout", default="auto", choices=["auto", "cdti", "exam", "xnat", "dicom"])
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--all-tags", action="store_true", help="also crawl every attribute into one wide table")
    s.add_argument("--per", default="instance", choices=["instance", "series"])
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("ls", help="list patients/studies/series/instances of an index")
    s.add_argument("output")
    s.add_argument("level", nargs="?", default="series", choices=["patients", "studies", "series", "instances"])
    s.add_argument("--where", nargs="*", metavar="KEY=VALUE", help="filters; KEY~REGEX for a regex")
    s.add_argument("--columns", help="comma-separated columns to show")
    s.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("export", help="export one series as nifti/npy/png/csv/dicom")
    s.add_argument("output")
    s.add_argument("series", help="series_key or SeriesInstanceUID (see `dicomprep ls OUT series`)")
    s.add_argument("--format", required=True, choices=["nifti", "npy", "png", "csv", "dicom"])
    s.add_argument("--dest", required=True)
    s.add_argument("--sortby", help="comma-separated attributes for npy arrays")
    s.add_argument("--deidentify", action="store_true", help="de-identify DICOM copies")
    s.add_argument("--configfile", help="config for --deidentify (profile options, secret file)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bids", help="build OUT/share/bids/ (BIDS) from the converted NIfTI of OUT")
    s.add_argument("output")
    s.add_argument("--configfile", help="config file (default config/config.yaml): export.bids rules and options")
    s.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. export.bids.link=copy")
    s.set_defaults(func=cmd_bids)

    s = sub.add_parser("verify", help="scan OUT/share for identifiers (leak verification)")
    s.add_argument("output")
    s.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="processes for the scan (default: the CPUs, at most 4); the verdict is the same for any N")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("status", help="summarise what is done and what failed in OUT")
    s.add_argument("output")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.snakemake_args = [a for a in extra if a != "--"]
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except DicomprepError as exc:
        print(f"dicomprep: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dicomprep: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dicomprep ls ... | head`: the reader has what it wanted
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except OSError:
            pass
        return 0
    except OSError as exc:  # an output folder that cannot be written, a full disk: a sentence, no traceback
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"dicomprep: cannot use{where}: {exc.strerror or exc}. Check that the folder exists, that you may "
              "write to it, and that the disk has space; then run the same command again.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
