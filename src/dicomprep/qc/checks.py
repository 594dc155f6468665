"""Per-series QC checks of one unit, each pass / warn / fail with a sentence.

Reads only what the unit's stages wrote (the index rows of the unit, the stage
manifests, the share/ outputs) and writes ``share/qc/<unit>/qc.json`` and the
unit's pictures beside it. Nothing here reads the original DICOM.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..errors import is_environment_error
from ..geometry import same_grid
from ..logs import get_logger
from ..paths import MANIFEST
from . import pictures

PASS, WARN, FAIL = "pass", "warn", "fail"
#: Plausible Hounsfield range of a CT volume (air −1000 … dense bone/metal).
HU_RANGE = (-1100.0, 4000.0)
#: Plausible RR interval of a heart beat (ms), for STEAM b-value adjustment.
RR_RANGE_MS = (300.0, 2000.0)


@dataclass
class Check:
    name: str
    status: str
    message: str


def _num(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def geometry_checks(row: pd.Series) -> list[Check]:
    """Slice count, spacing regularity, tilt, orientation, duplicates (from the index)."""
    out = []
    n = int(_num(row.get("n_instances")) or 0)
    frames = int(_num(row.get("n_frames")) or n) if not math.isnan(_num(row.get("n_frames"))) else n
    dup = int(_num(row.get("n_duplicates")) or 0) if not math.isnan(_num(row.get("n_duplicates"))) else 0
    out.append(Check("slice_count", PASS if frames > 1 else WARN,
                     f"{n} instance(s), {frames} frame(s)" + ("" if frames > 1 else "; a single frame is not a volume")))
    spacing, smin, smax = _num(row.get("slice_spacing")), _num(row.get("spacing_min")), _num(row.get("spacing_max"))
    regular = row.get("spacing_regular")
    if math.isnan(spacing):
        out.append(Check("spacing", PASS if frames <= 1 else WARN, "no slice spacing (single position or no geometry)"))
    elif regular is False or regular == "False":
        out.append(Check("spacing", WARN, f"irregular slice spacing {smin:.3g}–{smax:.3g} mm (median {spacing:.3g} mm)"))
    else:
        out.append(Check("spacing", PASS, f"regular slice spacing {spacing:.3g} mm"))
    if dup:
        positions = frames - dup
        multi_volume = positions > 0 and frames % positions == 0 and (
            row.get("kind") == "dwi" or int(_num(row.get("n_bvalues")) or 0) > 1 or str(row.get("Modality")) == "MR")
        if multi_volume:
            out.append(Check("positions", PASS, f"{positions} slice positions × {frames // positions} volumes"))
        else:
            out.append(Check("positions", WARN, f"{dup} duplicated slice position(s) among {frames} frames: "
                                                "repeated acquisitions or an incomplete further dimension"))
    tilt = _num(row.get("tilt_deg"))
    if not math.isnan(tilt) and tilt > 0.05:
        out.append(Check("tilt", WARN, f"slices stacked {tilt:.1f}° off the slice normal (gantry tilt)"))
    orient = row.get("orientation") or "none"
    out.append(Check("orientation", PASS if orient not in ("none", "oblique") else WARN, f"orientation {orient}"))
    return out


def intensity_checks(path: Path, is_ct: bool) -> list[Check]:
    """NaN/Inf and, for CT, Hounsfield plausibility of an output volume."""
    return intensity_checks_array(np.asanyarray(nib.load(str(path)).dataobj), is_ct)


def intensity_checks_array(data: np.ndarray, is_ct: bool) -> list[Check]:
    """:func:`intensity_checks` of a voxel array already in memory (scaled values)."""
    finite = np.isfinite(data) if data.dtype.kind == "f" else None
    out = []
    bad = int(data.size - finite.sum()) if finite is not None else 0
    out.append(Check("finite", FAIL if bad else PASS, f"{bad} NaN/Inf voxel(s)" if bad else "all voxels finite"))
    if is_ct and data.size and (finite is None or finite.any()):
        vals = data[finite] if finite is not None and bad else data
        lo, hi = float(np.float32(np.min(vals))), float(np.float32(np.max(vals)))
        ok = lo >= HU_RANGE[0] and hi <= HU_RANGE[1] + 30000 and lo < -500
        out.append(Check("hu_range", PASS if ok else WARN,
                         f"values {lo:.0f} to {hi:.0f} HU" + ("" if ok else f"; expected air near −1000 and no value below {HU_RANGE[0]:.0f}")))
    return out


def diffusion_checks(nifti: Path, bval: Path, bvec: Path) -> list[Check]:
    """Volumes = bvals = bvecs, a b0 present, unit gradient norms for b > 0."""
    n_vol = nib.load(str(nifti)).shape[3] if len(nib.load(str(nifti)).shape) > 3 else 1
    bvals = np.loadtxt(bval, ndmin=1)
    bvecs = np.loadtxt(bvec, ndmin=2)
    out = []
    same = n_vol == bvals.size == bvecs.shape[-1]
    out.append(Check("diffusion_counts", PASS if same else FAIL,
                     f"{n_vol} volumes, {bvals.size} b-values, {bvecs.shape[-1]} directions"))
    out.append(Check("b0", PASS if (bvals <= 50).any() else WARN,
                     f"{int((bvals <= 50).sum())} b≈0 volume(s)" if (bvals <= 50).any() else "no b=0 volume"))
    if same and (bvals > 50).any():
        norms = np.linalg.norm(bvecs[:, bvals > 50], axis=0)
        worst = float(np.max(np.abs(norms - 1)))
        out.append(Check("gradient_norms", PASS if worst < 0.01 else WARN,
                         f"gradient norms within {worst:.3g} of 1"))
    return out


def steam_checks(csv: Path) -> list[Check]:
    table = pd.read_csv(csv)
    rr = pd.to_numeric(table.get("rr_interval_ms"), errors="coerce")
    if rr is None or rr.isna().all():
        return [Check("steam_rr", WARN, "no RR intervals in the STEAM table")]
    lo, hi = float(rr.min()), float(rr.max())
    ok = RR_RANGE_MS[0] <= lo and hi <= RR_RANGE_MS[1]
    return [Check("steam_rr", PASS if ok else WARN,
                  f"RR {lo:.0f}–{hi:.0f} ms" + ("" if ok else f" (plausible: {RR_RANGE_MS[0]:.0f}–{RR_RANGE_MS[1]:.0f} ms)"))]


def mask_checks(mask: Path) -> tuple[list[Check], float]:
    """Non-empty, finite, volume in mL (voxel count × voxel volume)."""
    img = nib.load(str(mask))
    data = np.asanyarray(img.dataobj)
    n = int(np.count_nonzero(data))
    vox_ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    ml = n * vox_ml
    return [Check("mask_nonempty", PASS if n else FAIL, f"{n} voxels, {ml:.2f} mL" if n else "empty mask")], ml


def _outputs(manifest: pd.DataFrame | None, series_key: str) -> list[str]:
    if manifest is None or "outputs" not in manifest:
        return []
    rows = manifest[manifest["series_key"] == series_key]
    out = []
    for value in rows["outputs"]:
        out += [v for v in str(value or "").split(";") if v]
    return out


def _stage_rows(manifest: pd.DataFrame | None, series_key: str) -> list[dict]:
    if manifest is None:
        return []
    rows = manifest[manifest["series_key"] == series_key]
    return [{"status": str(r.get("status", "")), "reason": str(r.get("reason", "") or "")} for _, r in rows.iterrows()]


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def _stem(rel: str) -> str:
    name = Path(rel).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(rel).stem


def unit_qc(*, unit: str, series: pd.DataFrame, stage_dirs: dict[str, Path], share, pictures_on: bool = True,
            body_threshold: float = -200.0, log=None) -> dict:
    """Checks and pictures for every series of a unit; returns the qc.json content.

    ``stage_dirs``: the unit's stage directories by stage (deid, dcm2niix,
    ncct, seg; absent stages are left out), whose manifests and ``share/…``
    outputs are read; pictures go to ``share.qc(unit)`` (a
    :class:`dicomprep.paths.ShareTree`) and are listed relative to its root.
    """
    logger = log or get_logger("qc")
    qc_dir = share.qc(unit)
    manifests = {s: _read(Path(stage_dirs[s]) / MANIFEST) if s in stage_dirs else None
                 for s in ("dcm2niix", "ncct", "seg")}
    deid = _read(Path(stage_dirs["deid"]) / MANIFEST) if "deid" in stage_dirs else None
    #: where each listed output lives: its stage directory (outputs are "share/…" below it)
    where = {rel: Path(stage_dirs[s]) for s, m in manifests.items() if m is not None
             for value in m.get("outputs", pd.Series(dtype=object)) for rel in str(value or "").split(";") if rel}
    result = {"unit": unit, "series": []}
    for _, row in series.sort_values("series_id").iterrows():
        key = row["series_key"]
        entry = {"series_id": row["series_id"], "kind": row.get("kind"), "modality": row.get("Modality"),
                 "checks": [], "pictures": [], "outputs": [], "stages": {}}
        checks = geometry_checks(row) if row.get("kind") not in ("seg", "structured_report", "presentation_state") else []
        if deid is not None:
            d = deid[deid["series_key"] == key]
            written = int((d["status"] == "written").sum())
            entry["stages"]["deid"] = {"written": written, "dropped": int(len(d) - written),
                                       "reasons": sorted({str(r) for r in d["reason"] if str(r)})}
            if written == 0 and len(d):
                checks.append(Check("shared", WARN, "not shared: " + "; ".join(entry["stages"]["deid"]["reasons"])[:300]))
        for stage, man in manifests.items():
            rows = _stage_rows(man, key)
            if rows:
                entry["stages"][stage] = rows
                for r in rows:
                    if r["status"] == "failed":
                        checks.append(Check(f"{stage}_conversion", FAIL, r["reason"][:300] or f"{stage} failed"))
        outs = _outputs(manifests["dcm2niix"], key) + _outputs(manifests["ncct"], key) + _outputs(manifests["seg"], key)
        entry["outputs"] = outs
        for rel in outs:
            path = where.get(rel, Path("/nonexistent")) / rel
            if not path.is_file() or not (rel.endswith(".nii.gz") or rel.endswith(".nii")):
                continue
            try:
                checks += _volume_checks(path, rel, row, entry, qc_dir, share.root, pictures_on, body_threshold)
            except Exception as exc:  # a broken output is a failed check, not a crash
                if is_environment_error(exc):
                    raise
                checks.append(Check("readable", FAIL, f"{Path(rel).name}: cannot read ({type(exc).__name__}: {exc})"[:300]))
        entry["checks"] = [asdict(c) for c in checks]
        entry["status"] = FAIL if any(c.status == FAIL for c in checks) else WARN if any(c.status == WARN for c in checks) else PASS
        result["series"].append(entry)
    counts = Path(stage_dirs["deid"]) / "counts.json" if "deid" in stage_dirs else Path("/nonexistent")
    if counts.is_file():
        try:
            raw = json.loads(counts.read_text())
            result["deid_counts"] = {k: v for k, v in raw.items() if isinstance(v, (int, float, dict))}
        except ValueError:
            pass
    logger.info("qc %s: %d series, %d fail, %d warn", unit, len(result["series"]),
                sum(s["status"] == FAIL for s in result["series"]), sum(s["status"] == WARN for s in result["series"]))
    return result


def _volume_checks(path: Path, rel: str, row: pd.Series, entry: dict, qc_dir: Path, share_root: Path,
                   pictures_on: bool, body_threshold: float = -200.0) -> list[Check]:
    stem = _stem(rel)
    is_mask = "/masks/" in f"/{rel}" or "_seg-" in stem
    is_ct = str(row.get("Modality")) == "CT"
    checks: list[Check] = []
    if is_mask:
        cks, ml = mask_checks(path)
        checks += cks
        entry.setdefault("segments", []).append({"file": Path(rel).name, "volume_ml": round(ml, 3)})
        return checks
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)      # read once: the checks and the picture share it
    checks += intensity_checks_array(data, is_ct)
    bval, bvec = path.with_name(stem + ".bval"), path.with_name(stem + ".bvec")
    steam = path.with_name(stem + "_steam.csv")
    if not steam.is_file():
        cands = sorted(path.parent.glob(stem + "*steam*.csv"))
        steam = cands[0] if cands else steam
    if bval.is_file() and bvec.is_file():
        checks += diffusion_checks(path, bval, bvec)
        if steam.is_file():
            checks += steam_checks(steam)
    if pictures_on:
        png = qc_dir / f"{stem}.png"
        if bval.is_file() and data.ndim > 3:
            pictures.diffusion_picture_array(data, img.affine, np.loadtxt(bval, ndmin=1), png)
        elif is_ct:
            mask = path.with_name(stem.replace("_ct", "_ctmask") + ".nii.gz")
            pictures.volume_picture_array(data, img.affine, png, windows=list(pictures.CT_WINDOWS.values()),
                                          mask=np.asanyarray(nib.load(str(mask)).dataobj) if mask.is_file() else None,
                                          mask_threshold=None if mask.is_file() else body_threshold)
        else:
            pictures.volume_picture_array(data, img.affine, png)
        entry["pictures"].append(str(png.relative_to(share_root)))
    return checks


def mask_pictures(result: dict, stage_dirs: dict[str, Path], share, unit: str) -> None:
    """Outlines of each mask over its source volume (the first image output of the
    unit on the same grid)."""
    def path_of(rel: str) -> Path:
        for stage in ("seg", "dcm2niix", "ncct"):
            if stage in stage_dirs and (Path(stage_dirs[stage]) / rel).is_file():
                return Path(stage_dirs[stage]) / rel
        return Path(rel)

    qc_dir = share.qc(unit)
    images = [o for s in result["series"] for o in s["outputs"]
              if o.endswith(".nii.gz") and "/masks/" not in f"/{o}"]
    for s in result["series"]:
        for seg in s.get("segments", []):
            mask_rel = next((o for o in s["outputs"] if o.endswith(seg["file"])), None)
            if mask_rel is None:
                continue
            mask_img = nib.load(str(path_of(mask_rel)))
            for img_rel in images:
                img = nib.load(str(path_of(img_rel)))
                if same_grid(img.affine, img.shape, mask_img.affine, mask_img.shape):
                    png = qc_dir / f"{_stem(mask_rel)}.png"
                    pictures.volume_picture(path_of(img_rel), png, mask=path_of(mask_rel))
                    s["pictures"].append(str(png.relative_to(share.root)))
                    break
