"""NIfTI conversion of image series with the dcm2niix binary (issue 4).

One call of :func:`convert_series` converts one series:

1. the series' files are *staged* into a temporary folder (symlinks named
   ``f00000.dcm``…; gzip-wrapped inputs are decompressed there, since
   dcm2niix cannot read gzip). Which files are staged is the selection: derived
   images (ImageType DERIVED, e.g. ADC/FA maps) are left out of a diffusion
   volume by not staging them; nothing is moved.
2. dcm2niix runs with a filename pattern that is only the pseudonymous stem
   (``-f <stem>``, never its default ``%f_%p_%t_%s`` with folder names and
   times), uncompressed, with a BIDS sidecar (``-b y -ba y``). Its exit code is
   checked; its stdout/stderr go to the log.
3. Sidecars are reduced to an allowlist of acquisition parameters; NIfTI
   header text fields (``descrip``, ``aux_file``, ``db_name``,
   ``intent_name``) are blanked by patching the header bytes in place, so the
   voxel data, scaling, datatype and affine are byte-identical to dcm2niix's.
4. Images are gzip-compressed here (parallel multi-member gzip, RFC 1952
   §2.2) rather than by dcm2niix, because the header has to be patched before
   compression; see benchmarks/bench_dcm2niix.py for the cost.
5. Staging and dcm2niix's raw output live in a scratch folder (``/dev/shm``
   when it has room, see :func:`staging_root`); each finished output is
   written into ``out_dir`` under a temporary name and renamed. dcm2niix's
   own suffixes for several outputs of one series (``_e1``,
   ``_e2_fieldmaphz``, ``_ph``, ``_i00001``…) are kept after the stem, so names
   are stable.

For cardiac diffusion, :func:`detect_sequence_type` tells spin echo from
STEAM and :mod:`dicomprep.convert.steam` writes the adjusted b-value CSV.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import nibabel as nib
import pandas as pd

from ..dicomio import GZIP_MAGIC, atomic_path, atomic_write, read_bytes, read_dataset, value_text
from ..errors import DicomprepError, EnvironmentProblem, UnreadableDicom, is_environment_error
from ..index_exclusions import excluded_names, partial_reason
from ..logs import get_logger
from . import steam as steam_mod

#: Manifest columns (docs/contracts.md, "Converters and exports").
MANIFEST_COLUMNS = [
    "series_key", "series_id", "status", "reason", "outputs", "seq_type", "n_volumes",
    "dcm2niix_version", "seq_source",
]
#: NIfTI outputs and their companions, longest suffix first.
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".json", ".bval", ".bvec", ".csv")
#: NIfTI-1 header text fields cleared by :func:`scrub_nifti_header` (offset, length), NIfTI-1 §header.
NIFTI1_TEXT_FIELDS = {"db_name": (14, 18), "descrip": (148, 80), "aux_file": (228, 24),
                      "intent_name": (328, 16)}
#: NIfTI-2 has no db_name; offsets from nifti2.h.
NIFTI2_TEXT_FIELDS = {"descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)}
GZIP_LEVEL = 4          # convert.dcm2niix.gzip_level default (dcm2niix's own is 6)
GZIP_CHUNK = 1 << 20    # bytes per gzip member when compressing in parallel
#: dcm2niix exit codes (nii_dicom_batch.h) -> words for the reason column.
EXIT_CODES = {
    1: "unspecified error", 2: "no valid DICOM found", 4: "corrupt file found",
    5: "input folder invalid", 6: "output folder invalid", 7: "output folder read-only",
    8: "some images converted, some not", 9: "rename error", 10: "incomplete volumes found",
}
ALLOWLIST_FILE = Path(__file__).resolve().parents[1] / "data" / "sidecar_allowlist.txt"


# --- the binary ---------------------------------------------------------------

def dcm2niix_binary() -> str:
    """Path of the dcm2niix executable.

    Order: ``DICOMPREP_DCM2NIIX``; the PyPI package's own binary
    (``dcm2niix.bin``, the real executable rather than the Python launcher);
    ``dcm2niix`` beside ``sys.executable`` (the venv's ``bin/``); ``PATH``.
    """
    env = os.environ.get("DICOMPREP_DCM2NIIX")
    if env:
        return env
    with contextlib.suppress(Exception):
        import dcm2niix as _pkg  # lazy: the optional PyPI package (its binary); may be absent
        if Path(_pkg.bin).is_file():
            return str(_pkg.bin)
    beside = Path(sys.executable).parent / "dcm2niix"
    if beside.is_file():
        return str(beside)
    found = shutil.which("dcm2niix")
    if found:
        return found
    raise EnvironmentProblem(
        "dcm2niix not found: install the pinned PyPI package (`pip install dcm2niix==1.0.20260724`), "
        "use envs/dcm2niix.yaml, or set DICOMPREP_DCM2NIIX to the binary."
    )


@lru_cache(maxsize=4)
def _version_of(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise DicomprepError(f"dcm2niix at {binary} cannot run ({exc}); reinstall it.") from None
    match = re.search(r"v\d+\.\d+\.\d+\w*", out.stdout + out.stderr)
    return match.group(0) if match else "unknown"


def dcm2niix_version() -> str:
    """Version string reported by the binary (e.g. ``v1.0.20260724``)."""
    return _version_of(dcm2niix_binary())


# --- results ------------------------------------------------------------------

@dataclass
class SeriesConversion:
    """What :func:`convert_series` did for one series."""

    stem: str
    status: str = "converted"                 # converted | failed | skipped
    reason: str = ""
    outputs: list[Path] = field(default_factory=list)
    n_volumes: int = 0
    seq_type: str = "none"                    # se | steam | none
    seq_source: str = ""
    dcm2niix_version: str = ""
    returncode: int | None = None
    log_text: str = ""
    seconds: float = 0.0


# --- sidecars and headers -------------------------------------------------------

@lru_cache(maxsize=1)
def default_sidecar_keys() -> tuple[str, ...]:
    """The shipped allowlist (src/dicomprep/data/sidecar_allowlist.txt)."""
    keys = []
    for line in ALLOWLIST_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line)
    return tuple(keys)


def scrub_sidecar(sidecar: dict, keep_keys: Iterable[str] | None = None) -> dict:
    """Keep only allowlisted keys, in dcm2niix's order."""
    keep = set(default_sidecar_keys() if keep_keys is None else keep_keys)
    return {k: v for k, v in sidecar.items() if k in keep}


def scrub_sidecar_file(path: Path, keep_keys: Iterable[str] | None = None) -> None:
    """Rewrite a JSON sidecar with only the allowlisted keys (atomically)."""
    data = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
    text = json.dumps(scrub_sidecar(data, keep_keys), indent=2) + "\n"
    with atomic_write(path, "w") as fh:
        fh.write(text)


def _text_fields(header: bytes) -> dict[str, tuple[int, int]]:
    if int.from_bytes(header[:4], "little") == 348 or int.from_bytes(header[:4], "big") == 348:
        return NIFTI1_TEXT_FIELDS
    if int.from_bytes(header[:4], "little") == 540 or int.from_bytes(header[:4], "big") == 540:
        return NIFTI2_TEXT_FIELDS
    raise DicomprepError("not a NIfTI-1/2 header (sizeof_hdr is neither 348 nor 540)")


def scrub_header_bytes(buf: bytearray) -> bytearray:
    """Zero ``descrip``, ``aux_file``, ``db_name``, ``intent_name`` in a NIfTI
    header held in ``buf`` (modified in place and returned). Nothing else changes."""
    for offset, length in _text_fields(bytes(buf[:4])).values():
        buf[offset:offset + length] = b"\x00" * length
    return buf


def scrub_nifti_header(path: Path) -> None:
    """Clear the header text fields of an uncompressed ``.nii`` in place
    (only the header bytes are rewritten; voxel data is not touched)."""
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(540))
        fields = _text_fields(bytes(head[:4]))
        for offset, length in fields.values():
            fh.seek(offset)
            fh.write(b"\x00" * length)


def _compress_chunk(chunk: bytes, level: int) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: one gzip member
    return comp.compress(chunk) + comp.flush()


def gzip_file(src: Path, dest: Path, *, level: int = GZIP_LEVEL, threads: int = 2) -> None:
    """gzip ``src`` into ``dest`` atomically as a multi-member gzip stream
    (RFC 1952 §2.2: members concatenate), chunks compressed in parallel."""
    data = Path(src).read_bytes()
    chunks = [data[i:i + GZIP_CHUNK] for i in range(0, len(data), GZIP_CHUNK)] or [b""]
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        if threads > 1 and len(chunks) > 1:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # zlib releases the GIL
                for part in pool.map(lambda c: _compress_chunk(c, level), chunks):
                    fh.write(part)
        else:
            for chunk in chunks:
                fh.write(_compress_chunk(chunk, level))


# --- SE / STEAM -----------------------------------------------------------------

_STEAM_WORD = re.compile(r"steam|(?<![a-z])stm|_stm|stim", re.IGNORECASE)


def sequence_type_from_folder(sequence_folder: str | None) -> str | None:
    """``se``/``steam`` from a batch-layout sequence folder (``SE…``/``STEAM…``,
    case-insensitive), else None."""
    name = (sequence_folder or "").strip().lower()
    if name.startswith("steam"):
        return "steam"
    if name.startswith("se"):
        return "se"
    return None


def sequence_type_from_attributes(ds: Any = None, sidecar: dict | None = None) -> tuple[str | None, str]:
    """Detect STEAM / spin echo from DICOM attributes or dcm2niix's sidecar.

    STEAM hints: SequenceName (0018,0024), Philips PulseSequenceName
    (0018,9005) or private ScanningTechnique (2001,1020), Siemens
    tSequenceFileName (sidecar ``PulseSequenceDetails``) containing
    ``steam``/``stm``/``stim`` (stimulated echo). Spin echo: ScanningSequence
    (0018,0020) containing ``SE``, or EchoPulseSequence (0018,9008) ``SPIN``.
    Returns (type or None, which attribute decided).
    """
    hints: list[tuple[str, str]] = []
    if ds is not None:
        for name in ("SequenceName", "PulseSequenceName"):
            hints.append((name, value_text(ds.get(name))))
        with contextlib.suppress(Exception):
            elem = ds.get((0x2001, 0x1020))
            if elem is not None:
                hints.append(("Philips ScanningTechnique (2001,1020)", value_text(elem.value)))
    for key in ("SequenceName", "PulseSequenceName", "PulseSequenceDetails", "InternalPulseSequenceName"):
        if sidecar and key in sidecar:
            hints.append((f"sidecar {key}", value_text(sidecar[key])))
    for source, value in hints:
        if value and _STEAM_WORD.search(value):
            return "steam", source
    scanning = value_text(ds.get("ScanningSequence")) if ds is not None else value_text((sidecar or {}).get("ScanningSequence"))
    if "SE" in scanning.upper().replace("\\", " ").split():
        return "se", "ScanningSequence"
    echo = value_text(ds.get("EchoPulseSequence")) if ds is not None else ""
    if echo.upper() == "SPIN":
        return "se", "EchoPulseSequence"
    return None, ""


def detect_sequence_type(sequence_folder: str | None, ds: Any = None, sidecar: dict | None = None,
                         *, diffusion: bool = True) -> tuple[str, str]:
    """(``se``/``steam``/``none``, source). The folder decides first; then the
    attributes. A diffusion series with no STEAM hint is spin echo (pulsed
    gradient spin echo is the default diffusion preparation); a non-diffusion
    series is ``none``."""
    if not diffusion:
        return "none", "not a diffusion series"
    from_folder = sequence_type_from_folder(sequence_folder)
    if from_folder:
        return from_folder, "sequence folder"
    found, source = sequence_type_from_attributes(ds, sidecar)
    if found:
        return found, source
    return "se", "default for diffusion (no STEAM hint)"


# --- staging and running ------------------------------------------------------

def staging_root(needed_bytes: int = 0) -> str | None:
    """Folder for the per-series staging and dcm2niix's raw output:
    ``DICOMPREP_STAGING``, else ``/dev/shm`` (tmpfs: symlinks and small files
    cost microseconds there, milliseconds on some disks), else the system temp."""
    env = os.environ.get("DICOMPREP_STAGING")
    if env:
        return env
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with contextlib.suppress(OSError):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize > 2 * needed_bytes + (256 << 20):
                return str(shm)
    return None


def _staging_bytes(paths: Sequence[Path]) -> int:
    """Rough space the staging needs: gzip-wrapped inputs expand (~4x), and
    dcm2niix writes about as much as it reads."""
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            size = os.stat(p).st_size
            total += size * (5 if str(p).endswith(".gz") else 1)
    return total


def _publish_copy(src: Path, dest: Path) -> None:
    """Copy a finished output into place atomically (temp name, then rename;
    no fsync, like dcm2niix itself: the rule's manifest, written last, marks
    the conversion complete)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _inflate_to(src: Path, dest: Path) -> None:
    """Un-gzip a wrapped DICOM file into the staging folder (dcm2niix cannot read .gz)."""
    with open(dest, "wb") as out:
        out.write(read_bytes(src))


def stage_inputs(paths: Sequence[Path], stage_dir: Path, *, threads: int = 2) -> int:
    """Symlink (or, for gzip-wrapped files, decompress) each input into
    ``stage_dir`` under a neutral name (``f00000.dcm``…, so no input file or
    folder name reaches dcm2niix's output); return how many were decompressed."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    gz: list[tuple[Path, Path]] = []
    for i, src in enumerate(paths):
        src, dest = os.path.abspath(src), stage_dir / f"f{i:05d}.dcm"
        with open(src, "rb") as fh:
            is_gz = fh.read(2) == GZIP_MAGIC          # RFC 1952 magic
        if is_gz:
            gz.append((Path(src), dest))
        else:
            os.symlink(src, dest)
    if threads > 1 and len(gz) > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # zlib and I/O release the GIL
            list(pool.map(lambda job: _inflate_to(*job), gz))
    else:
        for job in gz:
            _inflate_to(*job)
    return len(gz)


def run_dcm2niix(stage_dir: Path, work_dir: Path, stem: str, *, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run dcm2niix on ``stage_dir`` writing ``<stem>*`` into ``work_dir``."""
    cmd = [dcm2niix_binary(), "-f", stem, "-z", "n", "-b", "y", "-ba", "y",
           *extra, "-o", str(work_dir), str(stage_dir)]
    return subprocess.run(cmd, capture_output=True, text=True)


def output_groups(work_dir: Path) -> dict[str, dict[str, Path]]:
    """dcm2niix's outputs grouped by basename: {basename: {suffix: path}}."""
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(work_dir.iterdir()):
        for suffix in OUTPUT_SUFFIXES:
            if path.name.endswith(suffix):
                groups.setdefault(path.name[: -len(suffix)], {})[suffix] = path
                break
    return groups


def count_volumes(nii: Path) -> int:
    """Volumes in a NIfTI: product of dims 4..7 (dim[0] gives how many count)."""
    shape = nib.load(str(nii)).shape
    n = 1
    for s in shape[3:]:
        n *= int(s)
    return n


def convert_series(
    paths: list[Path],
    out_dir: Path,
    stem: str,
    *,
    compress: bool = True,
    keep_keys: Iterable[str] | None = None,
    log: str | Path | logging.Logger | None = None,
    sequence_folder: str | None = None,
    diffusion: bool | None = None,
    steam: dict | None = None,
    threads: int = 2,
    gzip_level: int = GZIP_LEVEL,
    excluded_files: str | None = None,
    originals: Sequence[str | Path | None] | None = None,
) -> SeriesConversion:
    """Convert one series' files into ``out_dir/<stem>*`` (see module docstring).

    ``diffusion`` None = decided by whether dcm2niix wrote a .bval. ``steam``:
    the ``convert.steam`` config section; a STEAM diffusion series gets the
    adjusted b-value CSV. Never raises for a bad series: the result says
    ``failed`` and why. ``excluded_files`` (the series' index column: files
    of the series that could not be used, "name (reason); ...") makes a
    converted result ``partial`` and is named in a failure's reason, so a
    dcm2niix message about a gap (e.g. "Check sorted order") points to the
    missing file. ``originals``: the input file each of ``paths`` was de-identified
    from (private), read only for the STEAM parameters a scanner writes in
    ImageComments (0020,4000), which de-identification removes.
    """
    logger = log if isinstance(log, logging.Logger) else get_logger("dcm2niix", log, stderr=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = SeriesConversion(stem=stem)
    t0 = time.perf_counter()
    try:
        result.dcm2niix_version = dcm2niix_version()
        if not paths:
            result.status, result.reason = "skipped", "no input files selected"
            return result
        with tempfile.TemporaryDirectory(prefix="dicomprep-dcm2niix-", dir=staging_root(_staging_bytes(paths))) as tmp:
            stage, work = Path(tmp) / "in", Path(tmp) / "out"
            work.mkdir()
            stage_inputs(paths, stage, threads=threads)
            proc = run_dcm2niix(stage, work, stem)
            result.returncode = proc.returncode
            result.log_text = (proc.stdout or "") + (proc.stderr or "")
            logger.info("dcm2niix %s (%d files), exit %d:\n%s", stem, len(paths), proc.returncode,
                        _indent(result.log_text))
            groups = output_groups(work)
            niftis = {b: g for b, g in groups.items() if ".nii" in g}
            if proc.returncode < 0:  # killed (out of memory, time limit): the machine's problem
                raise EnvironmentProblem(f"dcm2niix was killed by signal {-proc.returncode} while converting "
                                         f"series {stem}; the job fails so that the next run redoes it")
            if proc.returncode != 0 or not niftis:
                result.status = "failed"
                last = [ln for ln in result.log_text.splitlines() if ln.strip()]
                hint = next((ln for ln in last if "error" in ln.lower()), last[-1] if last else "")
                meaning = EXIT_CODES.get(proc.returncode, "no NIfTI written" if proc.returncode == 0 else "error")
                result.reason = f"dcm2niix exit {proc.returncode} ({meaning}): {hint.strip()}"
                partial = partial_reason(len(paths), excluded_files)
                if partial:
                    result.reason += "; " + partial.replace("partial: built from", "given", 1)
                return result
            _finish_outputs(result, groups, paths, out_dir, work, compress=compress, keep_keys=keep_keys,
                            sequence_folder=sequence_folder, diffusion=diffusion, steam=steam,
                            threads=threads, gzip_level=gzip_level, logger=logger, originals=originals)
            partial = partial_reason(len(paths), excluded_files)
            if partial:
                logger.warning("%s: built from %d files; not usable: %s", stem, len(paths),
                               excluded_names(excluded_files))
            if partial and result.status == "converted":
                warning = next((ln.strip() for ln in result.log_text.splitlines()
                                if ln.strip().lower().startswith("warning")), "")
                result.status = "partial"
                result.reason = "; ".join(r for r in (partial, result.reason,
                                                      f"dcm2niix: {warning}" if warning else "") if r)
    except DicomprepError as exc:
        if is_environment_error(exc):
            raise
        result.status, result.reason = "failed", str(exc)
        logger.error("series %s failed: %s", stem, exc)
    except Exception as exc:  # a bad series must not stop the unit
        if is_environment_error(exc):
            raise
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        logger.exception("series %s failed", stem)
    finally:
        result.seconds = time.perf_counter() - t0
    return result


def _indent(text: str) -> str:
    return "\n".join("    " + ln for ln in text.splitlines())


def _finish_outputs(result: SeriesConversion, groups: dict[str, dict[str, Path]], paths: Sequence[Path],
                    out_dir: Path, work: Path, *, compress: bool, keep_keys, sequence_folder, diffusion,
                    steam, threads: int, gzip_level: int, logger: logging.Logger,
                    originals: Sequence[str | Path | None] | None = None) -> None:
    """Scrub, detect SE/STEAM, write STEAM CSVs, compress and move into place."""
    has_bval = any(".bval" in g for g in groups.values())
    is_diffusion = has_bval if diffusion is None else bool(diffusion)
    first_ds, first_sidecar = None, {}
    needs_attributes = is_diffusion and sequence_type_from_folder(sequence_folder) is None
    if needs_attributes:
        with contextlib.suppress(UnreadableDicom):
            first_ds = read_dataset(paths[0], stop_before_pixels=True)
    for g in (groups.values() if needs_attributes else ()):
        if ".json" in g:
            with contextlib.suppress(Exception):
                first_sidecar = json.loads(g[".json"].read_text(encoding="utf-8", errors="replace"))
            break
    result.seq_type, result.seq_source = detect_sequence_type(sequence_folder, first_ds, first_sidecar,
                                                              diffusion=is_diffusion)
    n_volumes = 0
    for base, files in groups.items():
        nii = files.get(".nii") or files.get(".nii.gz")
        if nii is None:
            continue
        if nii.name.endswith(".nii"):
            scrub_nifti_header(nii)
        n_volumes = max(n_volumes, count_volumes(nii))
        if ".json" in files:
            scrub_sidecar_file(files[".json"], keep_keys)
        if result.seq_type == "steam" and ".bval" in files:
            csv_path = work / f"{base}.csv"
            steam_mod.write_steam_csv(paths, nii, files[".bval"], csv_path, steam or {}, log=logger,
                                      comment_paths=originals)
            files[".csv"] = csv_path
    try:
        for base, files in groups.items():
            for suffix, path in sorted(files.items()):
                if suffix == ".nii" and compress:
                    dest = out_dir / (path.name + ".gz")
                    gzip_file(path, dest, level=gzip_level, threads=threads)
                else:
                    dest = out_dir / path.name
                    _publish_copy(path, dest)
                result.outputs.append(dest)
    except BaseException:
        for done in result.outputs:
            with contextlib.suppress(FileNotFoundError):
                done.unlink()
        result.outputs.clear()
        raise
    result.n_volumes = n_volumes
    result.status = "converted"


# --- naming -----------------------------------------------------------------------

def _slug(text: Any) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", str(text or "")).strip("-")
    return s[:48].strip("-")


def default_stem(subject: str, scan: str, series_id: str, description: str | None) -> str:
    """``<subject>_<scan>_<series_id>[_<description-slug>]``."""
    parts = [_slug(subject), _slug(scan), _slug(series_id)]
    desc = _slug(description)
    if desc:
        parts.append(desc)
    return "_".join(p for p in parts if p)


#: Simple BIDS suffix guess from kind and description words.
_BIDS_MR_WORDS = [
    (re.compile(r"flair", re.I), "FLAIR"),
    (re.compile(r"t1|mprage|spgr|tfl", re.I), "T1w"),
    (re.compile(r"t2", re.I), "T2w"),
    (re.compile(r"bold|fmri|rest|epi", re.I), "bold"),
    (re.compile(r"fieldmap|b0map|fmap", re.I), "fieldmap"),
]


def bids_suffix(kind: str, description: str | None, diffusion: bool = False) -> str:
    """BIDS-like suffix: dwi for diffusion, ct/pet/nm by modality, MR by words."""
    if diffusion or kind == "dwi":
        return "dwi"
    if kind.startswith("ct"):
        return "ct"
    if kind == "pt":
        return "pet"
    if kind == "nm":
        return "nm"
    for pattern, suffix in _BIDS_MR_WORDS:
        if pattern.search(description or ""):
            return suffix
    return "mr" if kind == "mr" else "image"


def bids_stem(subject: str, scan: str, series_id: str, description: str | None, kind: str) -> str:
    """``sub-<subject>_ses-<scan>[_acq-<slug>]_run-<n>_<suffix>``; run is the
    series number taken from the series id."""
    acq = re.sub(r"[^A-Za-z0-9]", "", str(description or ""))[:32]
    digits = re.search(r"\d+", series_id or "")
    run = int(digits.group(0)) if digits else 1
    parts = [f"sub-{re.sub(r'[^A-Za-z0-9]', '', subject)}", f"ses-{re.sub(r'[^A-Za-z0-9]', '', scan)}"]
    if acq:
        parts.append(f"acq-{acq}")
    parts.append(f"run-{run}")
    parts.append(bids_suffix(kind, description))
    return "_".join(parts)


# --- the unit rule ------------------------------------------------------------------

def _is_derived(image_type: Any) -> bool:
    return "DERIVED" in value_text(image_type).upper().replace("\\", " ").split()


def select_series_files(instances: pd.DataFrame, *, include_derived: bool = False,
                        diffusion: bool = False) -> tuple[list[Path], int]:
    """Files to stage for one series, sorted by InstanceNumber, and how many
    derived images (ImageType (0008,0008) value 1 DERIVED) were left out.

    Unless ``include_derived``: a diffusion series loses all its derived images
    (scanner ADC/FA/trace maps must not enter the diffusion volume); any other
    series loses them only when it also holds original images (a series that is
    entirely derived, e.g. a reformat, is converted as it is)."""
    inst = instances
    if not include_derived and "ImageType" in inst:
        derived = inst["ImageType"].map(_is_derived)
        if derived.any() and (diffusion or not derived.all()):
            inst = inst[~derived]
    order = [c for c in ("InstanceNumber", "source_path") if c in inst]
    inst = inst.sort_values(order, na_position="last") if order else inst
    paths = [Path(p) for p in inst["source_path"]]
    return paths, len(instances) - len(inst)


def _originals(inst: pd.DataFrame, paths: Sequence[Path]) -> list[str | None] | None:
    """The input file of each de-identified copy in ``paths`` (``sources``' ``path`` by
    ``source_path``), or None when the copies are the inputs."""
    if "path" not in inst or "source_path" not in inst:
        return None
    original_of = dict(zip(inst["source_path"].astype(str), inst["path"].astype(str)))
    originals = [original_of.get(str(p)) for p in paths]
    return None if all(o in (None, str(p)) for o, p in zip(originals, paths)) else originals


def _manifest(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    df["n_volumes"] = df["n_volumes"].astype("int64")
    return df


def convert_unit(*, unit: str, series: pd.DataFrame, sources: pd.DataFrame, share, config: dict,
                 log=None, threads: int = 2) -> pd.DataFrame:
    """Convert every image series of ``unit`` into ``share.nifti(unit)``; return the
    manifest (one row per series: status, reason, outputs as ``share/…``).

    ``series``: the unit's series rows; ``sources``: its instances with
    ``source_path`` (the de-identified copies); ``share``: a
    :class:`dicomprep.paths.ShareTree`. ``threads`` bounds the parallel gzip and
    input decompression.
    """
    logger = get_logger("convert_dcm2niix", log, stderr=not log)
    cfg = (config.get("convert") or {})
    dcfg = cfg.get("dcm2niix") or {}
    scfg = cfg.get("steam") or {}
    nifti_dir = share.nifti(unit)
    rows: list[dict] = []
    if not dcfg.get("enabled", True):
        return _manifest(rows)
    kinds = set(dcfg.get("kinds") or [])
    naming = dcfg.get("naming", "default")
    parts = unit.split("/")
    sequence_folder = parts[1] if len(parts) == 4 else None
    subject, scan = (parts[2], parts[3]) if len(parts) == 4 else (parts[-2] if len(parts) > 1 else unit, parts[-1])
    version = dcm2niix_version()
    for _, srow in series.sort_values("series_id").iterrows():
        key, sid, kind = srow["series_key"], srow["series_id"], str(srow.get("kind") or "")
        row = dict(series_key=key, series_id=sid, status="skipped", reason="", outputs="",
                   seq_type="none", n_volumes=0, dcm2niix_version=version, seq_source="")
        if kinds and kind not in kinds:
            row["reason"] = f"kind '{kind}' is not converted (convert.dcm2niix.kinds)"
            rows.append(row)
            continue
        inst = sources[sources["series_key"] == key]
        if inst.empty:
            row["reason"] = "no instances left after de-identification"
            rows.append(row)
            continue
        paths, n_derived = select_series_files(inst, include_derived=bool(dcfg.get("include_derived", False)),
                                               diffusion=kind == "dwi")
        if not paths:
            row["reason"] = (f"all {n_derived} images are derived (ADC/FA/trace maps); "
                             "set convert.dcm2niix.include_derived to convert them")
            rows.append(row)
            continue
        description = _series_description(paths[0]) if paths else ""
        stem = (bids_stem(subject, scan, sid, description, kind) if naming == "bids"
                else default_stem(subject, scan, sid, description))
        res = convert_series(paths, nifti_dir, stem, compress=bool(dcfg.get("compress", True)),
                             keep_keys=dcfg.get("sidecar_keep"), log=logger,
                             sequence_folder=sequence_folder, diffusion=True if kind == "dwi" else None,
                             steam=scfg, gzip_level=int(dcfg.get("gzip_level", GZIP_LEVEL)),
                             threads=max(1, int(threads or 2)),
                             excluded_files=str(srow.get("excluded_files") or "") or None,
                             originals=_originals(inst, paths))
        row.update(status=res.status, reason=res.reason, seq_type=res.seq_type, n_volumes=res.n_volumes,
                   seq_source=res.seq_source,
                   outputs=";".join(share.rel(p) for p in res.outputs))
        if n_derived and res.status == "converted":
            row["reason"] = f"{n_derived} derived images left out"
        gap = instance_number_gap(inst)
        if gap and res.status in ("converted", "partial", "failed"):  # a failure's likely cause, too
            row["reason"] = "; ".join(r for r in (row["reason"], gap) if r)
            logger.warning("%s %s: %s", unit, sid, gap)
        logger.info("%s %s: %s %s (%s, %d volumes, %.2f s)", unit, sid, res.status, res.reason,
                    res.seq_type, res.n_volumes, res.seconds)
        rows.append(row)
    return _manifest(rows)


def instance_number_gap(instances: pd.DataFrame) -> str:
    """A note when a series' Instance Numbers (0020,0013), whole and distinct, skip
    values between the first and the last (1-6 and 9-14: a DWI volume of two slices
    missing from the export, which dcm2niix converts without a word); "" otherwise."""
    if "InstanceNumber" not in instances or len(instances) < 3:
        return ""
    numbers = pd.to_numeric(instances["InstanceNumber"], errors="coerce")
    if numbers.isna().any() or numbers.duplicated().any() or (numbers % 1 != 0).any():
        return ""
    present = set(numbers.astype(int))
    first, last = min(present), max(present)
    absent = [n for n in range(first, last + 1) if n not in present]
    if not absent:
        return ""
    shown = ", ".join(map(str, absent[:5])) + (" ..." if len(absent) > 5 else "")
    return (f"instance numbers {first}-{last} lack {len(absent)} ({shown}): images (a volume, slices) may be "
            "missing from the export")


def _series_description(path: Path) -> str:
    """SeriesDescription (0008,103E) of the (de-identified) file; '' if absent."""
    with contextlib.suppress(UnreadableDicom):
        ds = read_dataset(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
        return str(ds.get("SeriesDescription", "") or "")
    return ""
