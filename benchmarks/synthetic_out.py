"""A synthetic dicomprep output folder for the report and cohort-step benchmarks.

``build(out, n_units, ...)`` writes what the cohort steps read after the unit
stages ran and ``publish`` (paths from ``dicomprep.paths``): ``private/units.csv``;
per unit its series table, the deid and dcm2niix stage manifests and
``share/qc/<unit>/qc.json``; and QC pictures (PNG) for the first
``n_pictures`` series. Values are plausible and deterministic (seeded), with a
mix of pass / warn / fail. No DICOM is involved.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

KINDS = [("fmri", "MR"), ("dwi", "MR"), ("t1", "MR"), ("ct_axial", "CT"), ("localizer", "MR")]


def unit_name(u: int) -> tuple[str, str, str]:
    subject = f"sub-{(u // 2) * 2654435761 % 16**8:08x}"
    scan = f"ses-{u * 40503 % 16**6:06x}{u:05d}"
    return f"exam/exam/{subject}/{scan}", subject, scan


def _png_pool(folder: Path, n: int = 8) -> list[bytes]:
    """A few distinct QC montages, made by the real picture code."""
    from dicomprep.qc import pictures

    pool = []
    rng = np.random.default_rng(1)
    for i in range(n):
        x, y, z = np.ogrid[:96, :96, :40]
        vol = ((x - 48) ** 2 / (30 + i) ** 2 + (y - 48) ** 2 / 35 ** 2 + (z - 20) ** 2 / 18 ** 2 <= 1).astype(np.float32)
        vol = vol * 800 + rng.normal(0, 40, vol.shape).astype(np.float32)
        png = pictures.volume_picture_array(vol, np.diag([2.0, 2.0, 3.0, 1.0]), folder / f"pool{i}.png")
        pool.append(png.read_bytes())
        png.unlink()
    return pool


def _checks(rng: random.Random, kind: str, n: int) -> tuple[list[dict], str]:
    checks = [{"name": "slice_count", "status": "pass", "message": f"{n} instance(s), {n} frame(s)"},
              {"name": "spacing", "status": "pass", "message": f"regular slice spacing {rng.choice([1, 2, 2.5, 3, 5])} mm"},
              {"name": "orientation", "status": "pass", "message": "orientation axial"},
              {"name": "finite", "status": "pass", "message": "all voxels finite"}]
    roll = rng.random()
    if roll < 0.12:
        checks[1] = {"name": "spacing", "status": "warn",
                     "message": f"irregular slice spacing {rng.uniform(0.5, 1.5):.3g}–{rng.uniform(3, 7):.3g} mm (median 2.5 mm)"}
    elif roll < 0.16:
        checks.append({"name": "tilt", "status": "warn", "message": f"slices stacked {rng.uniform(5, 25):.1f}° off the slice normal (gantry tilt)"})
    elif roll < 0.19:
        checks.append({"name": "dcm2niix_conversion", "status": "fail", "message": "dcm2niix wrote no NIfTI for this series"})
    if kind == "ct_axial":
        checks.append({"name": "hu_range", "status": "pass", "message": f"values {-rng.choice([1000, 1024, 2048])} to {rng.randrange(1500, 3100)} HU"})
    if kind == "dwi":
        checks.append({"name": "diffusion_counts", "status": "pass", "message": f"{n // 10} volumes, {n // 10} b-values, {n // 10} directions"})
    status = "fail" if any(c["status"] == "fail" for c in checks) else "warn" if any(c["status"] == "warn" for c in checks) else "pass"
    return checks, status


def build(out: Path, n_units: int, *, series_per_unit: int = 5, n_pictures: int = 3000, tables: bool = True,
          seed: int = 0) -> dict:
    """Write the synthetic output folder; returns counts."""
    from dicomprep.paths import layout

    out = Path(out)
    lay = layout(out)
    rng = random.Random(seed)
    pool = _png_pool(out) if n_pictures else []
    units = []
    n_series = n_pics = 0
    for u in range(n_units):
        unit, subject, scan = unit_name(u)
        units.append({"unit": unit, "group": "exam", "sequence": "exam", "subject": subject, "scan": scan,
                      "stages": "deid;dcm2niix"})
        qc_dir = lay.share.qc(unit)
        qc_dir.mkdir(parents=True, exist_ok=True)
        entries, keys, ids, kinds, mods, counts = [], [], [], [], [], []
        for s in range(series_per_unit):
            kind, modality = KINDS[s % len(KINDS)]
            n = rng.choice([1, 28, 39, 150, 176, 280, 819]) if kind != "localizer" else 3
            checks, status = _checks(rng, kind, n)
            sid = f"s{s + 1:03d}"
            stem = f"{sid}_{kind}"
            outputs = [f"nifti/{unit}/{stem}.nii.gz"]
            pics = []
            if n_pics < n_pictures:
                png = qc_dir / f"{stem}.png"
                png.write_bytes(pool[n_pics % len(pool)])
                pics.append(f"qc/{unit}/{stem}.png")
                n_pics += 1
            entries.append({"series_id": sid, "kind": kind, "modality": modality, "checks": checks, "pictures": pics,
                            "outputs": outputs, "stages": {"deid": {"written": n, "dropped": 0, "reasons": []},
                                                           "dcm2niix": [{"status": "converted", "reason": ""}]},
                            "status": status})
            keys.append(f"{u:06d}{s:03d}" + "0" * 31)
            ids.append(sid)
            kinds.append(kind)
            mods.append(modality)
            counts.append(n)
            n_series += 1
        (qc_dir / "qc.json").write_text(json.dumps({"unit": unit, "series": entries}, indent=1))
        if tables:
            d = lay.unit_dir(unit)
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({
                "series_key": keys, "series_id": ids, "kind": kinds, "Modality": mods, "n_instances": counts,
                "n_frames": counts, "Rows": [256] * len(keys), "Columns": [256] * len(keys),
                "orientation": ["axial"] * len(keys), "slice_spacing": [2.5] * len(keys),
                "spacing_regular": [True] * len(keys), "n_duplicates": [0] * len(keys), "unit": [unit] * len(keys)}),
                lay.unit_series(unit))
            manifests = {
                "deid": {"series_key": keys, "status": ["written"] * len(keys), "reason": [""] * len(keys),
                         "path": [f"/in/{unit}/{k}" for k in keys]},
                "dcm2niix": {"series_key": keys, "status": ["converted"] * len(keys), "reason": [""] * len(keys),
                             "outputs": [f"share/nifti/{unit}/{i}.nii.gz" for i in ids]},
            }
            for stage, columns in manifests.items():
                lay.stage_dir(stage, unit).mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table(columns), lay.stage_manifest(stage, unit))
    (out / "private").mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame(units).to_csv(lay.units_table, index=False)
    return {"units": n_units, "series": n_series, "pictures": n_pics}
