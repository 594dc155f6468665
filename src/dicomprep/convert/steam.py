"""Adjusted b-values of cardiac STEAM diffusion series (issue 4, item 4).

In a stimulated-echo (STEAM) diffusion sequence the diffusion time is one
cardiac cycle: the b-value the scanner reports assumes an RR interval
(the *assumed RR*), while the real one is that heartbeat's. So

* Siemens (and any vendor but Philips):
  ``adjusted = nominal × RR / assumed RR``, RR from NominalInterval
  (0018,1062) or, in enhanced files, RRIntervalTimeNominal (0020,9251) in the
  CardiacSynchronizationSequence (0018,9118). The assumed RR and the real b0
  are parsed from ImageComments (0020,4000) when the scanner writes them there
  (two numbers: b0 and RR; one: b0; or labelled ``b0=…``/``RR=…``), else the
  configured defaults (``convert.steam.assumed_rr_ms``, ``b0_default``).
  Frames with nominal b = 0 use the real b0 as their nominal value. When
  NominalInterval is 0 or missing, RR is estimated from acquisition times:
  a STEAM image takes two heartbeats, so RR = half the gap to the next frame
  (the last frame uses the gap from the previous one); gaps whose modified
  z-score (Iglewicz & Hoaglin: 0.6745·(x − median)/MAD) exceeds 3.5 are
  replaced by the mean of the nearest non-outlier neighbours.
* Philips: ``adjusted = nominal × mixing time / assumed RR``, from a scanner
  log CSV given by ``convert.steam.philips_log`` with columns ``b_value, gx,
  gy, gz, mixing_time_ms`` and optional ``assumed_rr_ms`` and ``frame``
  (``lps``: the direction is in DICOM patient coordinates (default);
  ``image``: in the image frame row/column/normal). Each volume's gradient
  direction (0018,9089) (or Philips private (2005,10B0-10B2)) is rotated into
  the log's frame and matched, sign-agnostic, together with the b-value.

The CSV has one row per volume, in the order of dcm2niix's ``.bval``; when a
volume has several slices (each acquired in its own heartbeat, so each with
its own RR) it has one row per slice of that volume, slices in NIfTI order.
Columns: ``b_value`` (nominal, as in the .bval), ``adjusted_b_value``,
``rr_interval_ms``, ``assumed_rr_ms``, ``frame_index`` (0-based position of
the image in the series sorted by InstanceNumber, then frame number),
``slice_index`` (0-based slice in the NIfTI, k) and ``source`` (where RR,
assumed RR and b0 came from; every fallback is named there).

Volumes are aligned with the DICOM frames by content: each NIfTI slice is
matched to the frame holding the same multiset of stored pixel values (exact,
independent of dcm2niix's flips and ordering rules). When pixel data cannot
be decoded the frames are taken in acquisition order and ``source`` says so.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from ..geometry import orthonormal_frame
from ..dicomio import atomic_write, read_dataset
from ..errors import DicomprepError, UnreadableDicom

CSV_COLUMNS = ["b_value", "adjusted_b_value", "rr_interval_ms", "assumed_rr_ms", "frame_index",
               "slice_index", "source"]
MODIFIED_Z_LIMIT = 3.5
DEFAULT_ASSUMED_RR_MS = 1000.0


@dataclass
class FrameInfo:
    """What one DICOM frame says about its heartbeat and diffusion encoding."""

    file_index: int
    frame: int                                   # frame number within the file (0-based)
    instance_number: int = 0
    rr_ms: float | None = None                   # NominalInterval / RRIntervalTimeNominal
    rr_attr: str = ""
    time_s: float | None = None                  # acquisition time, seconds since midnight
    comments: str = ""
    b_value: float | None = None
    direction: np.ndarray | None = None          # LPS unit vector
    orientation: np.ndarray | None = None        # IOP (6)
    key: str = ""                                # pixel-content key
    frame_index: int = -1


# --- small parsers --------------------------------------------------------------

_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def parse_image_comments(text: str | None) -> tuple[float | None, float | None]:
    """(real b0, assumed RR ms) from ImageComments (0020,4000), tolerant.

    Labelled ``b0 = 30, RR = 1000`` (any order, ``=``/``:`` optional) wins;
    else bare numbers not glued to letters: two -> (b0, RR), one -> (b0, None);
    anything else -> (None, None).
    """
    text = str(text or "")
    b0 = re.search(rf"\bb[\s_-]*0\s*[=:]?\s*({_NUMBER})", text, re.I)
    rr = re.search(rf"\b(?:RR|assumed[\s_]*RR|HR[\s_]*RR)\s*(?:\(ms\))?\s*[=:]?\s*({_NUMBER})", text, re.I)
    if b0 or rr:
        return (float(b0.group(1)) if b0 else None, float(rr.group(1)) if rr else None)
    numbers = re.findall(rf"(?<![A-Za-z0-9.]){_NUMBER}(?![A-Za-z0-9])", text)
    if len(numbers) == 2:
        return float(numbers[0]), float(numbers[1])
    if len(numbers) == 1:
        return float(numbers[0]), None
    return None, None


def dicom_time_seconds(value: Any) -> float | None:
    """Seconds since midnight of a TM (``HHMMSS.ffffff``, also ``HH:MM:SS``)
    or the time part of a DT (``YYYYMMDDHHMMSS.ffffff``)."""
    s = str(value or "").strip().replace(":", "")
    if not s:
        return None
    s = re.split(r"[+-]", s, maxsplit=1)[0] if len(s) > 6 and ("+" in s[6:] or "-" in s[6:]) else s
    if len(s.split(".")[0]) >= 14:          # DT
        s = s[8:]
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$", s)
    if not m:
        return None
    h, mi, sec = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return h * 3600 + mi * 60 + sec + float(m.group(4) or 0)


def modified_z_scores(values: np.ndarray) -> np.ndarray:
    """Iglewicz-Hoaglin modified z-score 0.6745·(x − median)/MAD; with MAD = 0
    the mean absolute deviation (× 1.253314) is used; all zero if both are 0."""
    x = np.asarray(values, float)
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad > 0:
        return 0.6745 * (x - med) / mad
    mean_ad = np.mean(np.abs(x - med))
    if mean_ad > 0:
        return (x - med) / (1.253314 * mean_ad)
    return np.zeros_like(x)


def rr_from_acquisition_times(times_s: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame RR (ms) from acquisition times in acquisition order: half the
    gap to the next frame (the last frame: from the previous one); outliers
    (|modified z| > 3.5) replaced by the mean of the nearest non-outlier
    neighbours. Returns (rr_ms, outlier mask)."""
    t = np.asarray(times_s, float)
    n = len(t)
    if n < 2:
        return np.full(n, np.nan), np.zeros(n, bool)
    gaps = np.round(np.diff(t), 6)          # TM resolution is 1 µs; no float noise in the MAD
    per_frame = np.append(gaps, gaps[-1])
    outlier = np.abs(modified_z_scores(per_frame)) > MODIFIED_Z_LIMIT
    outlier |= per_frame <= 0
    fixed = per_frame.copy()
    good = np.flatnonzero(~outlier)
    for i in np.flatnonzero(outlier):
        left = good[good < i]
        right = good[good > i]
        neighbours = ([per_frame[left[-1]]] if len(left) else []) + ([per_frame[right[0]]] if len(right) else [])
        fixed[i] = np.mean(neighbours) if neighbours else np.nan
    return fixed / 2.0 * 1000.0, outlier


# --- reading frames ----------------------------------------------------------------

def _first_item(owner: Any, name: str) -> Any:
    seq = getattr(owner, name, None) if owner is not None else None
    return seq[0] if seq else None


def _floats(value: Any, n: int) -> np.ndarray | None:
    with contextlib.suppress(Exception):
        arr = np.array([float(v) for v in value], float)
        if arr.size == n:
            return arr
    return None


def _private_value(ds: Any, group: int, elem: int) -> Any:
    with contextlib.suppress(Exception):
        el = ds.get((group, elem))
        if el is not None:
            return el.value
    return None


def _classic_direction(ds: Any) -> np.ndarray | None:
    """DiffusionGradientOrientation (0018,9089); Siemens (0019,100E); Philips (2005,10B0-B2)."""
    d = _floats(ds.get("DiffusionGradientOrientation"), 3)
    if d is None:
        item = _first_item(_first_item(ds, "MRDiffusionSequence"), "DiffusionGradientDirectionSequence")
        d = _floats(getattr(item, "DiffusionGradientOrientation", None), 3) if item is not None else None
    if d is None:
        d = _floats(_private_value(ds, 0x0019, 0x100E), 3)
    if d is None:
        parts = [_private_value(ds, 0x2005, e) for e in (0x10B0, 0x10B1, 0x10B2)]
        if all(p is not None for p in parts):
            d = _floats(parts, 3)
    return d


def _classic_bvalue(ds: Any) -> float | None:
    for value in (ds.get("DiffusionBValue"),
                  getattr(_first_item(ds, "MRDiffusionSequence"), "DiffusionBValue", None),
                  _private_value(ds, 0x0019, 0x100C)):
        with contextlib.suppress(Exception):
            if value is not None:
                return float(value if not isinstance(value, (bytes, bytearray)) else value.decode())
    return None


def _pixel_key(frame: np.ndarray) -> str:
    """Content key independent of flips, transposes and integer type."""
    return hashlib.sha1(np.sort(np.asarray(frame, np.float64).ravel()).tobytes()).hexdigest()


def _image_comments(path: str | Path, default: str) -> str:
    """ImageComments (0020,4000) of ``path`` (headers only), ``default`` when unreadable."""
    try:
        return str(read_dataset(path, stop_before_pixels=True).get("ImageComments", "") or "")
    except (UnreadableDicom, OSError):
        return default


def read_frames(paths: Sequence[Path], *, with_pixels: bool = True,
                comment_paths: Sequence[str | Path | None] | None = None) -> tuple[list[FrameInfo], dict]:
    """One :class:`FrameInfo` per frame of the series' files, and series facts
    (Manufacturer). Frames get ``frame_index`` by (InstanceNumber, file, frame).
    ``comment_paths``: per file, the file to read ImageComments (0020,4000) from
    instead (the input a de-identified copy was made from: the copy has none)."""
    frames: list[FrameInfo] = []
    facts: dict[str, Any] = {"manufacturer": "", "pixels": with_pixels}
    for fi, path in enumerate(paths):
        try:
            ds = read_dataset(path, stop_before_pixels=not with_pixels)
        except UnreadableDicom:
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            if with_pixels or not ds.get("Rows"):
                continue                     # presentation states, private non-image objects
        if not facts["manufacturer"]:
            facts["manufacturer"] = str(ds.get("Manufacturer", "") or "")
        pixels = None
        if with_pixels:
            try:
                pixels = ds.pixel_array
            except Exception:
                facts["pixels"] = False
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        if pixels is not None and n_frames == 1:
            pixels = pixels[None]
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        inst = int(ds.get("InstanceNumber", 0) or 0)
        top_rr = ds.get("NominalInterval")
        top_time = ds.get("AcquisitionTime") or ds.get("ContentTime")
        if not top_time and ds.get("AcquisitionDateTime"):
            top_time = ds.get("AcquisitionDateTime")
        top_iop = _floats(ds.get("ImageOrientationPatient"), 6)
        comments = str(ds.get("ImageComments", "") or "")
        if comment_paths is not None and fi < len(comment_paths) and comment_paths[fi]:
            comments = _image_comments(comment_paths[fi], comments)
        for k in range(n_frames):
            info = FrameInfo(file_index=fi, frame=k, instance_number=inst, comments=comments)
            groups = [g for g in ((per_frame[k] if per_frame is not None and k < len(per_frame) else None), shared)
                      if g is not None]
            # RR: enhanced RRIntervalTimeNominal (0020,9251) in (0018,9118), else NominalInterval (0018,1062)
            for g in groups:
                cs = _first_item(g, "CardiacSynchronizationSequence")
                if cs is not None and cs.get("RRIntervalTimeNominal") is not None:
                    info.rr_ms, info.rr_attr = float(cs.RRIntervalTimeNominal), "RRIntervalTimeNominal"
                    break
            if info.rr_ms is None and top_rr not in (None, ""):
                with contextlib.suppress(Exception):
                    info.rr_ms, info.rr_attr = float(top_rr), "NominalInterval"
            # time: FrameAcquisitionDateTime (0018,9074) in FrameContentSequence, else AcquisitionTime
            for g in groups:
                fc = _first_item(g, "FrameContentSequence")
                if fc is not None and fc.get("FrameAcquisitionDateTime"):
                    info.time_s = dicom_time_seconds(fc.FrameAcquisitionDateTime)
                    break
            if info.time_s is None:
                info.time_s = dicom_time_seconds(top_time)
            # diffusion
            for g in groups:
                md = _first_item(g, "MRDiffusionSequence")
                if md is not None:
                    with contextlib.suppress(Exception):
                        info.b_value = float(md.DiffusionBValue)
                    dg = _first_item(md, "DiffusionGradientDirectionSequence")
                    if dg is not None:
                        info.direction = _floats(dg.get("DiffusionGradientOrientation"), 3)
                    break
            if info.b_value is None:
                info.b_value = _classic_bvalue(ds)
            if info.direction is None:
                info.direction = _classic_direction(ds)
            info.orientation = top_iop
            for g in groups:
                po = _first_item(g, "PlaneOrientationSequence")
                if po is not None:
                    info.orientation = _floats(po.get("ImageOrientationPatient"), 6)
                    break
            if pixels is not None:
                info.key = _pixel_key(pixels[k])
            frames.append(info)
    order = sorted(range(len(frames)), key=lambda i: (frames[i].instance_number, frames[i].file_index,
                                                      frames[i].frame))
    for pos, i in enumerate(order):
        frames[i].frame_index = pos
    return frames, facts


# --- aligning volumes with frames ----------------------------------------------------

def align_volumes(nii_path: Path, frames: list[FrameInfo], n_volumes: int) -> tuple[list[list[tuple[FrameInfo, int]]], str]:
    """For each NIfTI volume, the frames it holds as (frame, slice index).

    Matches each slice's stored values to a frame's (see module docstring);
    falls back to acquisition order (time, then frame_index) when pixel keys
    are missing or do not match. Returns (volumes, note)."""
    if frames and all(f.key for f in frames):
        img = nib.load(str(nii_path))
        data = np.asarray(img.dataobj.get_unscaled())
        data = data.reshape(data.shape[:3] + (-1,)) if data.ndim >= 3 else data[:, :, None, None]
        by_key: dict[str, list[FrameInfo]] = {}
        for f in sorted(frames, key=lambda f: f.frame_index):
            by_key.setdefault(f.key, []).append(f)
        volumes: list[list[tuple[FrameInfo, int]]] = []
        ok = data.shape[3] == n_volumes
        for v in range(data.shape[3] if ok else 0):
            vol = []
            for z in range(data.shape[2]):
                cands = by_key.get(_pixel_key(data[:, :, z, v]))
                if not cands:
                    ok = False
                    break
                vol.append((cands.pop(0), z))
            if not ok:
                break
            volumes.append(vol)
        if ok:
            return volumes, ""
    ordered = sorted(frames, key=lambda f: (f.time_s if f.time_s is not None else np.inf, f.frame_index))
    if n_volumes <= 0 or not ordered:
        return [], "no frames"
    per = max(1, len(ordered) // n_volumes)
    volumes = [[(f, z) for z, f in enumerate(ordered[v * per:(v + 1) * per])] for v in range(n_volumes)]
    return volumes, "volume order assumed = acquisition order (pixel data not matched)"


# --- adjusted b-values -----------------------------------------------------------------

def _series_comment_values(frames: list[FrameInfo]) -> tuple[float | None, float | None]:
    for f in frames:
        b0, rr = parse_image_comments(f.comments)
        if b0 is not None or rr is not None:
            return b0, rr
    return None, None


def unwrap_midnight(times_s: Sequence[float]) -> list[float]:
    """Times of day (s) made continuous across midnight: the series starts after
    the largest gap on the 24-h circle (a series spans far less than 12 h), so a
    time shift that wrapped past 24:00 (e.g. de-identification's) keeps its gaps."""
    t = sorted(times_s)
    if len(t) < 2:
        return list(times_s)
    gaps = [t[i + 1] - t[i] for i in range(len(t) - 1)] + [t[0] + 86400.0 - t[-1]]
    cut = max(range(len(gaps)), key=gaps.__getitem__)
    if cut == len(gaps) - 1:
        return list(times_s)
    boundary = t[cut]                      # everything up to it belongs to the next day
    return [x + 86400.0 if x <= boundary else x for x in times_s]


def estimated_rr(frames: list[FrameInfo]) -> dict[int, tuple[float, bool]]:
    """RR (ms) per frame_index from acquisition times, for frames without a usable
    NominalInterval; {frame_index: (rr, was_outlier)}."""
    timed = sorted((f for f in frames if f.time_s is not None), key=lambda f: (f.time_s, f.frame_index))
    times = unwrap_midnight([f.time_s for f in timed])
    order = sorted(range(len(timed)), key=lambda i: (times[i], timed[i].frame_index))
    timed, times = [timed[i] for i in order], [times[i] for i in order]
    rr, outlier = rr_from_acquisition_times(times)
    return {f.frame_index: (float(r), bool(o)) for f, r, o in zip(timed, rr, outlier)}


def siemens_rows(bvals: Sequence[float], volumes: list[list[tuple[FrameInfo, int]]], frames: list[FrameInfo],
                 cfg: dict, note: str = "") -> list[dict]:
    """Rows of the CSV by the Siemens rule (module docstring): one per image,
    volumes in .bval order, slices in NIfTI order within a volume."""
    assumed_default = float(cfg.get("assumed_rr_ms") or DEFAULT_ASSUMED_RR_MS)
    b0_default = float(cfg.get("b0_default") or 0.0)
    series_b0, series_rr = _series_comment_values(frames)
    needs_estimate = any(not (f.rr_ms and f.rr_ms > 0) for f in frames)
    estimates = estimated_rr(frames) if needs_estimate else {}
    rows = []
    for b_nominal, vol in zip(bvals, volumes):
        for f, z in sorted(vol, key=lambda fz: fz[1]):
            if f.rr_ms and f.rr_ms > 0:
                rr_ms, rr_source = f.rr_ms, f.rr_attr
            elif f.frame_index in estimates and np.isfinite(estimates[f.frame_index][0]):
                rr_ms, was_outlier = estimates[f.frame_index]
                rr_source = "acquisition times (half gap" + (", outlier replaced)" if was_outlier else ")")
            else:
                rr_ms, rr_source = float("nan"), "missing (no NominalInterval, no acquisition times)"
            b0, rr = parse_image_comments(f.comments)
            if b0 is None and rr is None:
                b0, rr = series_b0, series_rr
            assumed = rr if rr else assumed_default
            source = [f"rr={rr_source}", f"assumed_rr={'ImageComments' if rr else 'config'}"]
            b_eff = float(b_nominal)
            if b_eff == 0:
                b_eff = b0 if b0 is not None else b0_default
                source.append(f"b0={'ImageComments' if b0 is not None else 'config'}")
            if note:
                source.append(note)
            rows.append(_row(b_nominal, b_eff * rr_ms / assumed, rr_ms, assumed, f, z, "; ".join(source)))
    return rows


def _row(b_nominal, adjusted, rr_ms, assumed, frame: FrameInfo, slice_index: int, source: str) -> dict:
    return {
        "b_value": _num(b_nominal), "adjusted_b_value": round(float(adjusted), 4),
        "rr_interval_ms": round(float(rr_ms), 4), "assumed_rr_ms": round(float(assumed), 4),
        "frame_index": frame.frame_index, "slice_index": slice_index, "source": source,
    }


def _num(x: float) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() else x


def read_philips_log(path: str | Path) -> list[dict]:
    """Rows of the user's Philips scanner log CSV (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DicomprepError(
            f"Philips STEAM log {path} (convert.steam.philips_log) does not exist; give the scanner log CSV "
            "with columns b_value, gx, gy, gz, mixing_time_ms."
        )
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(fh)]
    need = {"b_value", "gx", "gy", "gz", "mixing_time_ms"}
    if not rows or not need <= set(rows[0]):
        raise DicomprepError(
            f"Philips STEAM log {path} must have the columns {', '.join(sorted(need))} "
            "(optional: assumed_rr_ms, frame = lps|image)."
        )
    return rows


def _to_log_frame(direction: np.ndarray, orientation: np.ndarray | None, frame: str) -> np.ndarray:
    if frame in ("", "lps", "patient"):
        return direction
    if orientation is None:
        raise DicomprepError("Philips STEAM log is in the image frame but the series has no ImageOrientationPatient.")
    rot = orthonormal_frame(orientation[:3], orientation[3:]).T   # rows: image axes in LPS
    return rot @ direction


def philips_rows(bvals: Sequence[float], volumes: list[list[tuple[FrameInfo, int]]], cfg: dict,
                 note: str = "") -> list[dict]:
    """Rows by the Philips rule: mixing time and assumed RR from the log, matched
    by b-value (within 1 s/mm² or 1 %) and direction (|cos| ≥ 0.99)."""
    log_path = cfg.get("philips_log")
    if not log_path:
        raise DicomprepError(
            "Philips STEAM series needs the scanner log: set convert.steam.philips_log to the CSV "
            "with columns b_value, gx, gy, gz, mixing_time_ms."
        )
    log_rows = read_philips_log(log_path)
    assumed_default = float(cfg.get("assumed_rr_ms") or DEFAULT_ASSUMED_RR_MS)
    b0_default = float(cfg.get("b0_default") or 0.0)
    out = []
    images = [(v, b_nominal, f, z) for v, (b_nominal, vol) in enumerate(zip(bvals, volumes))
              for f, z in sorted(vol, key=lambda fz: fz[1])]
    for v, b_nominal, f, z in images:
        b = float(b_nominal)
        hits = []
        for r in log_rows:
            rb = float(r["b_value"])
            if abs(rb - b) > max(1.0, 0.01 * max(b, rb)):
                continue
            if b > 0:
                g = np.array([float(r["gx"]), float(r["gy"]), float(r["gz"])])
                if f.direction is None or not np.linalg.norm(g) or not np.linalg.norm(f.direction):
                    continue
                d = _to_log_frame(f.direction / np.linalg.norm(f.direction), f.orientation, r.get("frame", "").lower())
                if abs(float(np.dot(d, g / np.linalg.norm(g)))) < 0.99:
                    continue
            hits.append(r)
        keys = {(float(r["mixing_time_ms"]), r.get("assumed_rr_ms", "")) for r in hits}
        if not hits:
            raise DicomprepError(
                f"Philips STEAM log {log_path}: no row matches volume {v} (b={b:g}, direction "
                f"{None if f.direction is None else np.round(f.direction, 4).tolist()}); check the log's frame column."
            )
        if len(keys) > 1:
            raise DicomprepError(
                f"Philips STEAM log {log_path}: volume {v} (b={b:g}) matches {len(hits)} rows with different "
                "mixing times; make the log unambiguous (one row per b-value and direction)."
            )
        mixing, assumed_txt = next(iter(keys))
        assumed = float(assumed_txt) if assumed_txt else assumed_default
        b_eff = b0_default if b == 0 else b
        source = f"rr=philips log mixing_time_ms; assumed_rr={'philips log' if assumed_txt else 'config'}"
        if b == 0:
            source += "; b0=config"
        if note:
            source += f"; {note}"
        out.append(_row(b_nominal, b_eff * mixing / assumed, mixing, assumed, f, z, source))
    return out


def adjusted_bvalues(paths: Sequence[Path], nii_path: Path, bval_path: Path, cfg: dict | None = None, *,
                     comment_paths: Sequence[str | Path | None] | None = None) -> list[dict]:
    """CSV rows (one per volume, .bval order) for a STEAM series converted by
    dcm2niix into ``nii_path``/``bval_path`` from the DICOM ``paths``
    (``comment_paths``: see :func:`read_frames`)."""
    cfg = cfg or {}
    bvals = [float(x) for x in Path(bval_path).read_text().split()]
    frames, facts = read_frames(paths, with_pixels=True, comment_paths=comment_paths)
    volumes, note = align_volumes(Path(nii_path), frames, len(bvals))
    if len(volumes) != len(bvals):
        raise DicomprepError(f"STEAM: {len(bvals)} b-values but {len(volumes)} volumes could be aligned for {nii_path.name}.")
    if "philips" in facts["manufacturer"].lower():
        return philips_rows(bvals, volumes, cfg, note)
    return siemens_rows(bvals, volumes, frames, cfg, note)


def write_steam_csv(paths: Sequence[Path], nii_path: Path, bval_path: Path, csv_path: Path, cfg: dict | None = None,
                    *, log: logging.Logger | None = None,
                    comment_paths: Sequence[str | Path | None] | None = None) -> list[dict]:
    """Compute :func:`adjusted_bvalues` and write them to ``csv_path`` atomically."""
    rows = adjusted_bvalues(paths, nii_path, bval_path, cfg, comment_paths=comment_paths)
    with atomic_write(csv_path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if log is not None:
        sources = sorted({r["source"] for r in rows})
        log.info("STEAM b-values for %s: %d volumes; %s", Path(nii_path).name, len(rows), " | ".join(sources))
    return rows
