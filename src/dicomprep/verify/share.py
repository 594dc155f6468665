"""The leak scan of ``OUT/share/`` (:func:`verify_share`) and its entries.

Every file and path component under share/ is searched with one
:class:`~.matcher.Matcher` by the scanner of its format (:func:`scanner_for`),
pictures and pixels by OCR (:mod:`.pixels`). ``share/verification.json``
names the file, the identifier's kind and where it was found, never the
value (docs/contracts.md); the values go to ``private/logs/verify.log``.
:func:`check_share` is what the ``verify`` rule runs (via ``stages.verify``),
:func:`verify_command` what ``dicomprep verify OUT`` runs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from ..dicomio import write_text
from ..errors import DicomprepError
from ..logs import get_logger
from ..parallel import map_chunked
from ..paths import layout
from .collect import collect_identifiers
from .identifiers import FIX, IdentifierSet
from .matcher import Found, Matcher
from .pixels import scan_share_pixels
from .scan_dicom import scan_dicom
from .scan_hdf5 import scan_hdf5
from .scan_html import scan_html
from .scan_json import scan_json
from .scan_nifti import scan_nifti
from .scan_png import scan_png
from .scan_raw import scan_raw
from .scan_tables import scan_parquet, scan_table_text
from .scan_text import TEXT_SUFFIXES, scan_nrrd, scan_text

#: deid config options that retain a kind by the user's explicit choice (PS3.15 E.3).
RETAINING_OPTIONS = {
    "keep_folder_names": ("folder",),
    "retain_device_identity": ("station", "serial"),
    "retain_institution_identity": ("institution",),
    "retain_uids": ("uid",),
}

def scanner_for(path: Path) -> Callable[[Path, Matcher, Found], None]:
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img")):
        return scan_nifti
    if suffix in (".dcm", ".dicom", ".ima") or name.endswith(".dcm.gz"):
        return scan_dicom
    if suffix == ".json":
        return scan_json
    if suffix in (".csv", ".tsv", ".tab"):
        return scan_table_text
    if suffix in (".parquet", ".pq"):
        return scan_parquet
    if suffix in (".h5", ".hdf5", ".hdf", ".he5"):
        return scan_hdf5
    if suffix == ".png":
        return scan_png
    if suffix in (".nrrd", ".nhdr"):
        return scan_nrrd
    if suffix in (".html", ".htm", ".svg", ".css"):
        return scan_html
    if suffix in TEXT_SUFFIXES:
        return lambda p, m, f: scan_text(p.read_bytes(), m, f, suffix.lstrip(".").upper())
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return scan_dicom
    return scan_raw


def retained_kinds(config: dict | None, audit: dict | None = None) -> dict[str, str]:
    """Kinds the user chose to keep in share/ (PS3.15 E.3 options), with the config key.

    Reads ``deid.options.<option>`` and ``deid.keep_folder_names`` from the
    config and, when given, the effective ``options`` that the de-identification
    recorded in ``share/audit.yaml`` (after a preset adjusted them).
    """
    deid = ((config or {}).get("deid") or {})
    sources = [("deid.", deid), ("deid.options.", deid.get("options") or {}),
               ("audit.yaml options.", (audit or {}).get("options") or {})]
    out = {}
    for key, kinds in RETAINING_OPTIONS.items():
        for prefix, source in sources:
            if isinstance(source, dict) and source.get(key) is True:
                for kind in kinds:
                    out.setdefault(kind, prefix + key)
    return out


def _read_audit(share: Path) -> dict | None:
    """``share/audit.yaml`` as written by the de-identification stage, if any."""
    path = share / "audit.yaml"
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:
        return None
    return doc if isinstance(doc, dict) else None


def _share_files(share: Path, exclude: set[Path]) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(share):
        dirs.sort()
        for name in sorted(names):
            p = Path(root) / name
            if p in exclude or (name.startswith(".verification.json") and name.endswith(".part")):
                continue
            files.append(p)
    return files


def _share_dirs(share: Path) -> list[Path]:
    return sorted(Path(root) / d for root, dirs, _ in os.walk(share) for d in dirs)


class VerifyResult(dict):
    """The result written to verification.json; ``private_hits`` (an attribute, not an
    item, so it never reaches a JSON dump or the report) adds the identifying values."""

    private_hits: list = []


def safe_values(config: dict | None, audit: dict | None = None) -> list[str]:
    """``verify.safe_values`` of the config, and those the audit recorded (so
    ``dicomprep verify OUT`` without a config honours them): values the user
    declared not identifying."""
    values = list(((config or {}).get("verify") or {}).get("safe_values") or [])
    values += list(((audit or {}).get("verify") or {}).get("safe_values") or [])
    return sorted({str(v) for v in values if str(v).strip()})


#: Below this many files the text scan runs in the calling process (a pool costs more).
PARALLEL_FROM_FILES = 200
#: The matcher of the running scan, for forked workers (:func:`_scan_file`).
_SCAN_MATCHER: Matcher | None = None

Finding = tuple[str, set[str], set[tuple[str, str]]]


def _scan_file(path: Path) -> tuple[list[Finding], str | None]:
    """The text scan of one file: its name, then its content by the scanner of its
    format (raw bytes when it cannot be parsed). Returns (where, kinds, the
    (kind, value) pairs seen so far in the file) per finding, and a warning."""
    matcher = _SCAN_MATCHER
    assert matcher is not None
    matcher.forget()
    findings: list[Finding] = []

    def found(where: str, kinds: set[str]) -> None:
        findings.append((where, set(kinds), set(matcher.recent)))

    kinds = matcher.kinds(path.name)
    if kinds:
        found("path component (file name)", kinds)
    warning = None
    try:
        scanner_for(path)(path, matcher, found)
    except Exception as exc:  # never let a strange file pass unseen: fall back to bytes
        warning = f"{path} could not be parsed ({exc}); scanning its raw bytes"
        try:
            scan_raw(path, matcher, found)
        except OSError as err:
            findings.append((f"unreadable file ({type(err).__name__})", {"unreadable"}, set()))
    return findings, warning


def _scan_files(matcher: Matcher, files: list[Path], workers: int) -> list[tuple[list[Finding], str | None]]:
    """:func:`_scan_file` over ``files`` in input order, on ``workers`` forked processes
    (the matcher is shared by the fork, not pickled)."""
    global _SCAN_MATCHER
    _SCAN_MATCHER = matcher
    try:
        return map_chunked(_scan_file, files, workers, serial_below=PARALLEL_FROM_FILES, chunk=(16, 256))
    finally:
        _SCAN_MATCHER = None
        matcher.forget()


def verify_share(out_dir: str | os.PathLike, *, log: str | os.PathLike | None = None,
                 config: dict | None = None, ids: IdentifierSet | None = None,
                 output: str | os.PathLike | None = None, status_if_clean: str = "pass",
                 status_if_hits: str = "fail", workers: int = 1) -> dict:
    """Scan every file and path component under ``OUT/share/``; write the result.

    Writes ``share/verification.json`` (or ``output``) atomically in every case
    (pass, fail, or an error before the scan) and the hits with full paths, the
    source of each identifier and its value to ``private/logs/verify.log`` (or
    ``log``). Returns the result dict: status, files_scanned,
    identifiers_checked (count per kind), not_checked (kind -> config key that
    retains it), declared_safe (how many values ``verify.safe_values`` lists),
    hits [{file, kind, where, source, fix}] (no values) and, on a failure,
    what_to_do. The attribute ``private_hits`` of the returned
    :class:`VerifyResult` holds the hits with their identifying values (for the
    terminal message and the private log; never written to share/).
    """
    out_dir = Path(out_dir)
    share = out_dir / "share"
    output = Path(output) if output else share / "verification.json"
    log_path = Path(log) if log else out_dir / "private" / "logs" / "verify.log"
    logger = get_logger("verify", log_path, stderr=False)
    try:
        if ids is None:
            ids = collect_identifiers(out_dir, log=logger, workers=workers)
    except Exception as exc:
        message = (f"the leak scan could not start: {exc}. Nothing in share/ may be handed out until "
                   "`dicomprep verify OUT` passes.")
        failed = json.dumps({"status": "error", "error": message, "files_scanned": 0, "n_hits": 0, "hits": []},
                            indent=2) + "\n"
        write_text(output, failed)
        write_text(log_path.parent / "verification.json", failed)
        logger.error("verify: %s", message)
        raise
    audit = _read_audit(share)
    retained = retained_kinds(config, audit)
    declared = safe_values(config, audit)
    ids = ids.without(retained)
    ids.declare_safe(declared)
    matcher = Matcher(ids)
    logger.info("verify: %d identifiers (%s) against %s", len(ids),
                ", ".join(f"{k} {n}" for k, n in ids.counts().items() if n), share)
    if declared:
        logger.info("verify: %d values declared safe in verify.safe_values are not searched", len(declared))

    hits: list[dict] = []
    private_hits: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    # the verdict file is the verifier's own (and, during a run, the last run's): never content
    verdict = layout(out_dir).verification_json
    files = _share_files(share, {output.resolve(), output, verdict, verdict.resolve()}) if share.is_dir() else []

    def report(rel: Path, where: str, kinds: set[str], seen_values: set | None = None) -> None:
        safe_file = "/".join(matcher.redact(part) for part in rel.parts)
        safe_where = matcher.redact(where)
        recent = matcher.recent if seen_values is None else seen_values
        for kind in sorted(kinds):
            key = (safe_file, kind, safe_where)
            if key in seen:
                continue
            seen.add(key)
            values = sorted(v for k, v in recent if k == kind)
            source = "; ".join(sorted({ids.source_of(kind, v) for v in values})) or "the input headers"
            fix = FIX.get(kind, FIX["_"])
            hits.append({"file": safe_file, "kind": kind, "where": safe_where, "source": source, "fix": fix})
            private_hits.append({"file": str(share / rel), "kind": kind, "where": safe_where, "source": source,
                                 "values": values, "fix": fix})
            logger.error("leak: %s: %s in %s; the identifier %s comes from %s; to do: %s", share / rel, kind,
                         safe_where, " / ".join(repr(v) for v in values) or "(see the file)", source, fix)

    matcher.forget()
    for d in _share_dirs(share) if share.is_dir() else []:
        rel = d.relative_to(share)
        kinds = matcher.kinds(d.name)
        if kinds:
            report(rel, f"path component {len(rel.parts)} (folder)", kinds)
        matcher.forget()
    for path, (findings, warning) in zip(files, _scan_files(matcher, files, workers)):
        if warning:
            logger.warning("verify: %s", warning)
        for where, kinds, seen_values in findings:
            report(path.relative_to(share), where, kinds, seen_values)
    pixel_scan = scan_share_pixels(out_dir, files, matcher, ids, report, config, logger, workers=workers)
    result = {
        "status": status_if_hits if hits else status_if_clean,
        "files_scanned": len(files),
        "pixels": pixel_scan,
        "identifiers_checked": ids.counts(),
        "not_checked": retained,
        "declared_safe": len(declared),
        "n_hits": len(hits),
        "hits": hits,
    }
    if hits and status_if_hits == "fail":
        result["what_to_do"] = _what_to_do(hits)
    # share/ is byte-identical for the same input and secret: the scan's seconds stay in the private copy
    shared = {**result, "pixels": {k: v for k, v in (pixel_scan or {}).items() if k != "seconds"}}
    write_text(output, json.dumps(shared, indent=2) + "\n")
    # a private copy with the values, beside the log: it survives a workflow engine that
    # deletes the outputs of a failed job, and tells the user exactly what was found
    write_text(log_path.parent / "verification.json",
               json.dumps({**result, "hits": private_hits}, indent=2, ensure_ascii=False) + "\n")
    result = VerifyResult(result)
    result.private_hits = private_hits
    logger.info("verify: %s, %d files scanned, %d hits", result["status"], len(files), len(hits))
    if hits and status_if_hits == "fail":
        logger.error("verify: %s", _failure_message(result))
    return result


def _what_to_do(hits: list[dict]) -> list[str]:
    """One sentence per (kind, source): what the user can do (no identifying values)."""
    out = []
    for kind, source in sorted({(h["kind"], h.get("source", "")) for h in hits}):
        n = sum(1 for h in hits if h["kind"] == kind and h.get("source", "") == source)
        out.append(f"{kind} from {source or 'the input headers'} found {n} time(s): "
                   f"{FIX.get(kind, FIX['_'])}")
    return out


def _failure_message(result: dict, limit: int = 20) -> str:
    """The sentence a person reads in the terminal: how many hits, each as
    ``file: kind (where)`` with the source of the identifier (an input folder is
    named: the user owns it; other values stay in private/logs/verify.log), and
    what to do per kind and source."""
    hits = getattr(result, "private_hits", None) or result["hits"]
    public = result["hits"]
    lines = []
    for pub, h in list(zip(public, hits))[:limit]:
        values = h.get("values", [])
        named = (" " + ", ".join(repr(v) for v in values[:3])) if h["kind"] == "folder" and values else ""
        lines.append(f"  {pub['file']}: {pub['kind']} ({pub['where']}) from {h.get('source') or 'the input headers'}"
                     f"{named}")
    if len(public) > limit:
        lines.append(f"  and {len(public) - limit} more")
    todo = [f"  {line}" for line in _what_to_do(public)]
    return (f"{len(public)} identifiers found in share/, so nothing in share/ may be handed out yet:\n"
            + "\n".join(lines) + "\nWhat to do:\n" + "\n".join(todo)
            + "\nEvery hit is listed in share/verification.json and, with the values, in private/logs/verify.log.")


def check_share(out_dir: str | os.PathLike, *, result_path: str | os.PathLike | None = None,
                log: str | os.PathLike | None = None, enforce: bool = True, config: dict | None = None,
                workers: int = 1) -> dict:
    """Scan share/, write ``result_path`` (default share/verification.json) and fail on a hit.

    With ``enforce`` false (``anonymisation: false``) the status is
    ``not-deidentified`` and nothing is raised whatever is found.
    """
    result = verify_share(out_dir, log=log, config=config, output=result_path,
                          status_if_clean="pass" if enforce else "not-deidentified",
                          status_if_hits="fail" if enforce else "not-deidentified",
                          workers=max(1, int(workers or 1)))
    if enforce and result["hits"]:
        raise DicomprepError(_failure_message(result))
    return result


def verify_command(out_dir: str | os.PathLike, config: dict | None = None, workers: int = 1) -> int:
    """``dicomprep verify OUT``: scan, print a summary, exit status 0 (pass) or 1 (hits).
    ``workers`` processes share the scan; the outcome is the same for any number."""
    try:
        result = verify_share(out_dir, config=config, workers=max(1, int(workers)))
    except DicomprepError as exc:
        print(f"dicomprep verify: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {k}" for k, n in result["identifiers_checked"].items() if n)
    print(f"{result['status']}: {result['files_scanned']} files scanned for {counts}")
    if result["hits"]:
        print(_failure_message(result), file=sys.stderr)
        return 1
    return 0
