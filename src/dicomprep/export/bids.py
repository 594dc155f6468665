"""A BIDS dataset in ``share/bids/`` from the dcm2niix stage's outputs (issue 18).

:func:`build_bids` reads the dcm2niix manifests (``private/stages/dcm2niix/<unit>/
dcm2niix.parquet``), decides for every NIfTI output a BIDS name from a small
table of heuristics (``src/dicomprep/data/bids_map.yaml``; a site's own rules
in ``export.bids.rules`` are tried first, in the spirit of heudiconv's
heuristics) and hardlinks (or copies) the already converted, already scrubbed
files into::

    share/bids/
      dataset_description.json        GeneratedBy: dicomprep <version>, dcm2niix <version>
      participants.tsv                participant_id only (pseudonyms)
      README
      sub-<subject>/ses-<scan>/{anat,dwi,func,fmap}/sub-…_ses-…[_task-…][_dir-…][_run-N]_<suffix>.nii.gz|json|bval|bvec
      derivatives/dicomprep/          what BIDS raw data has no place for (CT volumes,
                                      SEG masks, STEAM b-value tables), own dataset_description.json

Subject and session labels are the unit's pseudonyms (``subject``, ``scan``)
with everything but letters and digits removed. Sidecars are the dcm2niix
stage's scrubbed sidecars plus what BIDS requires (``TaskName`` for BOLD,
``Units`` for a field map in Hz, ``IntendedFor`` for field maps); labels taken
from a description use the *de-identified* sidecar's ``SeriesDescription``,
never the private index. Nothing is converted a second time.

The dataset is built in a temporary folder beside ``bids_dir`` and moved into
place at the end, so a crash never leaves a half-written dataset, and a re-run
replaces the previous one whole. Same inputs, same bytes.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from ..version import __version__
from ..convert.dcm2niix import count_volumes
from ..dicomio import atomic_path
from ..errors import ConfigError, DicomprepError
from ..logs import get_logger
from ..paths import layout
from ..select import condition_mask
from ..tables import share_safe_text
from ..units import load_unit_series

BIDS_VERSION = "1.9.0"
MAP_FILE = Path(__file__).resolve().parents[1] / "data" / "bids_map.yaml"
DATATYPES = ("anat", "dwi", "func", "fmap", "perf")
#: Entity order of the BIDS specification (Appendix: entity table), for the ones a rule may set.
ENTITY_ORDER = ("task", "acq", "ce", "rec", "dir", "run", "echo", "part")
#: What a rule's ``when`` may test (see bids_map.yaml).
FEATURES = ("description", "shared_description", "protocol", "kind", "Modality", "image_type",
            "scanning_sequence", "sequence_name", "epi", "sequence_kind", "mr_acquisition", "units",
            "echo_number", "pe_direction", "output_tag", "has_bval", "n_volumes", "seq_type",
            "series_has_fieldmap", "task", "dir")
RULE_KEYS = {"name", "when", "datatype", "suffix", "entities", "skip", "derivative", "reason"}
_DIR_RX = re.compile(r"(?<![A-Za-z])(AP|PA|LR|RL|SI|IS)(?![A-Za-z])")
#: Sidecar keys BIDS requires per suffix that only the acquisition can give (TaskName and Units are added here).
REQUIRED_SIDECAR = {"bold": ("RepetitionTime",), "epi": ("PhaseEncodingDirection",), "asl": ("RepetitionTimePreparation",)}
#: Entities BIDS requires per suffix.
REQUIRED_ENTITIES = {"bold": ("task",), "epi": ("dir",)}
COLUMNS = ["unit", "series_key", "series_id", "source", "status", "rule", "bids_path", "reason"]


# --- the heuristics table --------------------------------------------------------------

@lru_cache(maxsize=1)
def default_rules() -> tuple[dict, ...]:
    """The shipped heuristics (src/dicomprep/data/bids_map.yaml)."""
    rules = yaml.safe_load(MAP_FILE.read_text()) or []
    return tuple(check_rule(r, f"{MAP_FILE.name} item {i + 1}") for i, r in enumerate(rules))


def check_rule(rule: Any, where: str) -> dict:
    """Refuse a malformed rule with a sentence naming it; return it."""
    if not isinstance(rule, dict):
        raise ConfigError(f"config: {where}: a BIDS rule is a mapping with when/datatype/suffix, not {rule!r}.")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ConfigError(f"config: {where}: unknown key(s) {sorted(unknown)}; a BIDS rule has "
                          f"{', '.join(sorted(RULE_KEYS))}.")
    if not isinstance(rule.get("when", {}), dict):
        raise ConfigError(f"config: {where}.when must map features to conditions.")
    for feature in rule.get("when") or {}:
        if feature not in FEATURES:
            raise ConfigError(f"config: {where}.when.{feature}: there is no such feature; use one of "
                              f"{', '.join(FEATURES)}.")
    if not (rule.get("skip") or rule.get("derivative")):
        if rule.get("datatype") not in DATATYPES:
            raise ConfigError(f"config: {where}.datatype is {rule.get('datatype')!r}; use one of "
                              f"{', '.join(DATATYPES)} (or skip: <reason>).")
        if not re.fullmatch(r"[A-Za-z0-9]+", str(rule.get("suffix") or "")):
            raise ConfigError(f"config: {where}.suffix {rule.get('suffix')!r} must be letters and digits "
                              "(a BIDS suffix such as T1w, bold, dwi).")
    for key in (rule.get("entities") or {}):
        if key not in ENTITY_ORDER:
            raise ConfigError(f"config: {where}.entities.{key}: use one of {', '.join(ENTITY_ORDER)} "
                              "(sub, ses and run are set by dicomprep).")
    return rule


def rules_from_config(bcfg: dict) -> list[dict]:
    site = [check_rule(r, f"export.bids.rules[{i}]") for i, r in enumerate(bcfg.get("rules") or [])]
    return site + (list(default_rules()) if bcfg.get("default_rules", True) else [])


def label(text: Any) -> str:
    """A BIDS label: letters and digits only."""
    return re.sub(r"[^A-Za-z0-9]", "", str(text or ""))


def task_label(shared: str, private: str = "") -> str:
    """``task-`` label from the de-identified series description (``shared``):
    the word after "task", else ``rest`` when it says rest, else the whole
    description in letters and digits. Without a shared description (the
    default de-identification removes it), only the fixed word ``rest`` is
    taken from the original description, never its text; else ``unknown``."""
    if shared:
        m = re.search(r"task[-_ ]?([A-Za-z0-9]+)", shared, re.IGNORECASE)
        if m:
            return m.group(1)
    if re.search(r"(?<![a-z])(rest|rsfmri)", shared or private or "", re.IGNORECASE):
        return "rest"
    return label(shared) or "unknown"


def dir_label(description: str, pe_direction: str) -> str:
    """``dir-`` label: AP/PA/LR/RL/SI/IS written in the description (a fixed
    vocabulary, so safe to take from the original), else the
    PhaseEncodingDirection axis (``j-`` -> ``jminus``)."""
    m = _DIR_RX.search(description or "")
    if m:
        return m.group(1)
    pe = str(pe_direction or "")
    return pe.replace("-", "minus") if re.fullmatch(r"[ijk]-?", pe) else ""


# --- features of one output ---------------------------------------------------------------

def _joined(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\\".join(map(str, value))
    return "" if value is None else str(value)


def _sidecar(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        return {}


def _groups(paths: Iterable[Path]) -> dict[str, dict[str, Path]]:
    """Outputs of one series grouped by basename: {base: {'.nii.gz': path, '.json': ...}}."""
    groups: dict[str, dict[str, Path]] = {}
    for p in paths:
        for suffix in (".nii.gz", ".nii", ".json", ".bval", ".bvec", ".csv"):
            if p.name.endswith(suffix):
                groups.setdefault(p.name[: -len(suffix)], {})[suffix] = p
                break
    return groups


def _output_tag(base: str, bases: list[str]) -> str:
    """dcm2niix's suffix of one output (``_e2_fieldmaphz``, ``_ph``...): what
    follows the stem that the series' outputs share; '' for a single output."""
    if len(bases) < 2:
        return ""
    stem = os.path.commonprefix(bases)
    if stem not in bases:                 # _e1/_e2 share "_e": back up to the tag boundary
        cut = stem.rfind("_")
        stem = stem[:cut] if cut > 0 else stem
    return base[len(stem):]


def series_features(outputs: list[Path], series_row: dict, manifest_row: dict) -> list[dict]:
    """One feature dict per NIfTI output of a converted series."""
    groups = _groups(outputs)
    bases = sorted(b for b, g in groups.items() if ".nii.gz" in g or ".nii" in g)
    sidecars = {b: _sidecar(groups[b].get(".json")) for b in bases}
    has_fieldmap = any(str(s.get("Units", "")).lower() == "hz" for s in sidecars.values())
    rows = []
    for base in bases:
        files = groups[base]
        side = sidecars[base]
        nii = files.get(".nii.gz") or files.get(".nii")
        scanning = _joined(side.get("ScanningSequence"))
        seqname = " ".join(_joined(side.get(k)) for k in ("SequenceName", "PulseSequenceName",
                                                          "PulseSequenceDetails", "InternalPulseSequenceName")
                           if side.get(k))
        epi = bool(re.search(r"EP", scanning) or re.search(r"ep2d|epfid|epse|epi|bold", seqname, re.I))
        if re.search(r"GR", scanning) or re.search(r"fid|epirt|bold|gre", seqname, re.I):
            sequence_kind = "gre"
        elif re.search(r"SE", scanning) or re.search(r"epse|tse|spin", seqname, re.I):
            sequence_kind = "se"
        else:
            sequence_kind = ""
        shared = str(side.get("SeriesDescription") or "")      # de-identified: may name files
        private = str(series_row.get("SeriesDescription") or "")  # original: for matching only
        units = str(side.get("Units") or "")
        rows.append({
            "base": base, "files": files,
            "description": shared or private,
            "shared_description": shared,
            "epi": epi,
            "protocol": str(series_row.get("ProtocolName") or ""),
            "kind": str(series_row.get("kind") or ""),
            "Modality": str(side.get("Modality") or series_row.get("Modality") or ""),
            "image_type": _joined(side.get("ImageType")),
            "scanning_sequence": scanning,
            "sequence_name": seqname,
            "sequence_kind": sequence_kind,
            "mr_acquisition": str(side.get("MRAcquisitionType") or ""),
            "units": units,
            "echo_number": side.get("EchoNumber"),
            "pe_direction": str(side.get("PhaseEncodingDirection") or ""),
            "output_tag": _output_tag(base, bases),
            "has_bval": ".bval" in files and ".bvec" in files,
            "n_volumes": count_volumes(nii) if nii is not None else 0,
            "seq_type": str(manifest_row.get("seq_type") or "none"),
            "series_has_fieldmap": has_fieldmap and units.lower() != "hz",
            "task": task_label(shared, private),
            "dir": dir_label(shared or private, side.get("PhaseEncodingDirection")),
        })
    return rows


#: Features that may fill an entity: only what is already in share/ (the original
#: description and protocol are for matching, never for names).
_NAME_SAFE = ("shared_description", "kind", "Modality", "image_type", "scanning_sequence", "sequence_name",
              "sequence_kind", "mr_acquisition", "units", "echo_number", "pe_direction", "output_tag",
              "n_volumes", "seq_type", "task", "dir")


def _fill(template: str, feat: dict, *, where: str) -> str:
    """An entity value from a rule template; ``{description}`` means the shared
    (de-identified) description."""
    values = {k: ("" if feat.get(k) is None else feat.get(k)) for k in _NAME_SAFE}
    values["description"] = values["shared_description"]
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"config: {where}: {template!r} names {exc} which cannot be used in a name; use "
                          f"{{description}} or one of {', '.join(_NAME_SAFE)}.") from None


def match_rule(features: dict, rules: list[dict]) -> dict | None:
    """The first rule whose conditions all hold for one output's features."""
    table = pd.DataFrame([{k: v for k, v in features.items() if k != "files"}])
    for i, rule in enumerate(rules):
        ok = True
        for column, cond in (rule.get("when") or {}).items():
            where = f"export.bids rule {rule.get('name') or i + 1}"
            if not bool(condition_mask(table, column, cond, where=where).iloc[0]):
                ok = False
                break
        if ok:
            return rule
    return None


# --- building the dataset --------------------------------------------------------------------

def _link(src: Path, dest: Path, mode: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink":
        try:
            os.link(src, dest)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(src, dest)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _stage_and_unit(manifest: Path, out_dir: Path) -> tuple[str, str]:
    """(stage, unit) of a stage manifest ``private/stages/<stage>/<unit>/manifest.parquet``."""
    rel = manifest.resolve().parent.relative_to((Path(out_dir) / "private" / "stages").resolve())
    return rel.parts[0], "/".join(rel.parts[1:])


def _unit_of(manifest: Path, out_dir: Path, table: pd.DataFrame) -> str:
    with contextlib.suppress(ValueError):
        return _stage_and_unit(manifest, out_dir)[1]
    for entry in table.get("outputs", pd.Series(dtype=object)).fillna(""):
        first = str(entry).split(";")[0].strip()
        if first.startswith("share/nifti/"):
            return str(Path(first).parent.relative_to("share/nifti"))
    raise DicomprepError(f"cannot tell which unit the manifest {manifest} belongs to: it is not under "
                         "private/convert/<unit>/ and lists no share/nifti/<unit>/ outputs.")


def _name(sub: str, ses: str, entities: dict[str, str], suffix: str) -> str:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else [])
    parts += [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k)]
    return "_".join(parts + [suffix])


def _versions(manifests: list[pd.DataFrame]) -> tuple[str, str]:
    d2n = sorted({str(v) for m in manifests for v in m.get("dcm2niix_version", pd.Series(dtype=object)).dropna()
                  if str(v)})
    return __version__, (d2n[0] if d2n else "")


def build_bids(*, out_dir, manifests: Iterable[str | os.PathLike], config: dict,
               units_csv: str | os.PathLike | None = None, bids_dir: str | os.PathLike | None = None,
               derivative_manifests: Iterable[str | os.PathLike] = (), log=None) -> pd.DataFrame:
    """Build ``share/bids/`` for the whole cohort from the dcm2niix stage's outputs.

    ``manifests``: the units' ``private/stages/dcm2niix/<unit>/manifest.parquet``;
    ``derivative_manifests``: optional ``ncct.parquet`` / ``seg.parquet`` whose
    outputs (CT volumes, masks) go to ``derivatives/dicomprep/``;
    ``units_csv``: ``private/units.csv`` (default: under ``out_dir``);
    ``bids_dir``: default ``share/bids``. Returns one row per NIfTI output of
    every series in the manifests (columns :data:`COLUMNS`): ``status`` is
    ``bids`` (``bids_path`` relative to ``bids_dir``), ``derivative``
    (relative path under ``bids_dir``), ``skipped`` or ``failed`` with a
    ``reason`` sentence. The table names private series keys: keep it in
    ``private/``.
    """
    logger = log if log is not None and not isinstance(log, (str, os.PathLike)) else get_logger("bids", log)
    out_dir = Path(out_dir)
    bcfg = (config.get("export") or {}).get("bids")
    bcfg = {"enabled": bool(bcfg)} if isinstance(bcfg, bool) or bcfg is None else dict(bcfg)
    bids_dir = Path(bids_dir) if bids_dir else out_dir / "share" / "bids"
    units = pd.read_csv(units_csv or out_dir / "private" / "units.csv", dtype=str, keep_default_na=False)
    unit_info = {r["unit"]: r for _, r in units.iterrows()}
    _check_labels(units)
    rules = rules_from_config(bcfg)
    mode = str(bcfg.get("link", "hardlink"))
    with_derivatives = bool(bcfg.get("derivatives", True))

    tables = []
    rows: list[dict] = []
    planned: list[dict] = []       # outputs that get a BIDS name
    derived: list[dict] = []       # outputs copied to derivatives/dicomprep
    for manifest in sorted(Path(m) for m in manifests):
        table = pd.read_parquet(manifest)
        tables.append(table)
        if table.empty:
            continue
        unit = _unit_of(manifest, out_dir, table)
        info = unit_info.get(unit)
        if info is None:
            raise DicomprepError(f"unit {unit} of {manifest} is not in units.csv; re-run the select step.")
        sub, ses = label(info["subject"]), label(info["scan"])
        if not sub:
            raise DicomprepError(f"unit {unit}: subject {info['subject']!r} has no letters or digits for a BIDS label.")
        try:
            series = load_unit_series(out_dir, unit).set_index("series_key")
        except FileNotFoundError:
            series = pd.DataFrame()
        for _, m in table.sort_values("series_id").iterrows():
            base = dict(unit=unit, series_key=m["series_key"], series_id=m["series_id"], source="",
                        status="skipped", rule="", bids_path="", reason="")
            if m["status"] != "converted":
                why = share_safe_text(m.get("reason")) or "no reason given"
                rows.append({**base, "reason": f"not converted by dcm2niix ({m['status']}: {why})"})
                continue
            outputs = [out_dir / p.strip() for p in str(m.get("outputs") or "").split(";") if p.strip()]
            missing = [p for p in outputs if not p.is_file()]
            if missing:
                rows.append({**base, "status": "failed",
                             "reason": f"{len(missing)} output(s) of the dcm2niix stage are missing (e.g. "
                                       f"{missing[0].relative_to(out_dir)}); re-run the conversion of unit {unit}."})
                continue
            srow = series.loc[m["series_key"]].to_dict() if m["series_key"] in series.index else {}
            for feat in series_features(outputs, srow, m.to_dict()):
                nii = feat["files"].get(".nii.gz") or feat["files"].get(".nii")
                row = {**base, "source": str(nii.relative_to(out_dir))}
                rule = match_rule(feat, rules)
                if rule is None:
                    rows.append({**row, "reason": (
                        f"no BIDS rule matched (shared description '{feat['shared_description']}', kind {feat['kind'] or '?'}, "
                        f"{feat['n_volumes']} volume(s)); add a rule under export.bids.rules to map it")})
                    continue
                row["rule"] = str(rule.get("name") or "")
                if rule.get("skip"):
                    rows.append({**row, "reason": str(rule["skip"])})
                    continue
                if rule.get("derivative"):
                    derived.append({**row, "sub": sub, "ses": ses, "files": feat["files"], "folder": feat["Modality"].lower() or "other",
                                    "reason": str(rule.get("reason") or "BIDS raw data has no place for it")})
                    continue
                side = _sidecar(feat["files"].get(".json"))
                lacking = [k for k in REQUIRED_SIDECAR.get(str(rule.get("suffix")), ()) if side.get(k) in (None, "", [])]
                if lacking:
                    rows.append({**row, "reason": (
                        f"rule {row['rule']} names it {rule['datatype']}/{rule['suffix']}, but its sidecar lacks "
                        f"{', '.join(lacking)}, which BIDS requires there; check convert.dcm2niix.sidecar_keep "
                        "or map it with another rule")})
                    continue
                entities = {k: label(_fill(str(v), feat, where=f"export.bids rule {row['rule'] or '?'}.entities.{k}"))
                            for k, v in (rule.get("entities") or {}).items()}
                lacking = [k for k in REQUIRED_ENTITIES.get(str(rule["suffix"]), ()) if not entities.get(k)]
                if lacking:
                    rows.append({**row, "reason": (
                        f"rule {row['rule']} names it {rule['datatype']}/{rule['suffix']}, which needs the "
                        f"{', '.join(e + '-' for e in lacking)} entity, and none could be derived; give it in "
                        "the rule's entities")})
                    continue
                planned.append({**row, "sub": sub, "ses": ses, "datatype": rule["datatype"],
                                "suffix": rule["suffix"], "entities": entities, "feat": feat})
                if feat["seq_type"] == "steam" and ".csv" in feat["files"]:
                    derived.append({**row, "sub": sub, "ses": ses, "files": {".csv": feat["files"][".csv"]},
                                    "folder": "dwi", "status_only": True,
                                    "reason": "STEAM-adjusted b-value table: BIDS dwi has no place for it"})

    # a field map in Hz needs its magnitude image (case 3 of the BIDS field maps)
    magnitudes = {(p["unit"], p["series_key"]) for p in planned if p["suffix"] == "magnitude"}
    for p in [p for p in planned if p["suffix"] == "fieldmap" and (p["unit"], p["series_key"]) not in magnitudes]:
        planned.remove(p)
        rows.append({k: p[k] for k in COLUMNS if k in p} | {"status": "skipped", "reason": (
            "a field map in Hz without a magnitude image from the same series: BIDS needs both "
            "(_fieldmap + _magnitude); map its magnitude with a rule, or share it from share/nifti")})
    # multi-echo BOLD: the echoes of one series get echo-<n> (BIDS allows it for bold)
    by_series: dict[tuple, list[dict]] = {}
    for p in planned:
        if p["suffix"] == "bold":
            by_series.setdefault((p["unit"], p["series_key"]), []).append(p)
    for members in by_series.values():
        echoes = [m["feat"]["echo_number"] for m in members]
        if len(members) > 1 and all(e is not None for e in echoes) and len(set(echoes)) == len(echoes):
            for m in members:
                m["entities"]["echo"] = str(int(m["feat"]["echo_number"]))
    # runs: run-<n> where two outputs of a session map to the same name
    groups: dict[tuple, list[dict]] = {}
    for p in planned:
        key = (p["sub"], p["ses"], p["datatype"], p["suffix"], tuple(sorted(p["entities"].items())))
        groups.setdefault(key, []).append(p)
    for members in groups.values():
        members.sort(key=lambda p: (p["series_id"], p["source"]))
        if len(members) > 1:
            for i, p in enumerate(members, 1):
                p["entities"]["run"] = str(i)
    # the fmap magnitude/fieldmap pair of a series share their run index already (same sort order);
    for p in planned:
        folder = f"sub-{p['sub']}" + (f"/ses-{p['ses']}" if p["ses"] else "") + f"/{p['datatype']}"
        p["name"] = f"{folder}/{_name(p['sub'], p['ses'], p['entities'], p['suffix'])}"

    tmp_dir = bids_dir.parent / f".{bids_dir.name}.tmp"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    try:
        intended = _intended_for(planned)
        for p in planned:
            files, feat = p["feat"]["files"], p["feat"]
            nii = files.get(".nii.gz") or files.get(".nii")
            ext = ".nii.gz" if nii.name.endswith(".nii.gz") else ".nii"
            _link(nii, tmp_dir / (p["name"] + ext), mode)
            for suffix in (".bval", ".bvec"):
                if p["datatype"] == "dwi" and suffix in files:
                    _link(files[suffix], tmp_dir / (p["name"] + suffix), mode)
            sidecar = _sidecar(files.get(".json"))
            if p["suffix"] == "bold":
                sidecar["TaskName"] = p["entities"].get("task") or feat["task"]
            if p["suffix"] == "fieldmap":
                sidecar.setdefault("Units", "Hz")
            if p["datatype"] == "fmap" and intended.get((p["sub"], p["ses"])):
                sidecar["IntendedFor"] = intended[(p["sub"], p["ses"])]
            _write_json(tmp_dir / (p["name"] + ".json"), sidecar)
            rows.append({k: p[k] for k in COLUMNS if k in p} | {"status": "bids", "bids_path": p["name"] + ext,
                                                               "reason": ""})
        deriv_root = "derivatives/dicomprep"
        for d in derived:
            if not with_derivatives:
                if not d.get("status_only"):
                    rows.append({k: d[k] for k in COLUMNS if k in d} | {"status": "skipped", "reason": (
                        d["reason"] + "; export.bids.derivatives is off, so it stays in share/nifti only")})
                continue
            folder = f"{deriv_root}/sub-{d['sub']}" + (f"/ses-{d['ses']}" if d["ses"] else "") + f"/{d['folder']}"
            first = ""
            for suffix, src in sorted(d["files"].items(), key=lambda kv: (not kv[0].startswith(".nii"), kv[0])):
                _link(src, tmp_dir / folder / src.name, mode)
                first = first or f"{folder}/{src.name}"
            if not d.get("status_only"):
                rows.append({k: d[k] for k in COLUMNS if k in d} | {"status": "derivative", "bids_path": first})
        for m in derivative_manifests:
            rows += _copy_stage_outputs(Path(m), out_dir, unit_info, tmp_dir, deriv_root, mode, with_derivatives)
        dicomprep_version, d2n_version = _versions(tables)
        _write_dataset_files(tmp_dir, bcfg, planned, dicomprep_version, d2n_version,
                             with_derivatives and (tmp_dir / deriv_root).is_dir())
        if bids_dir.exists():
            old = bids_dir.parent / f".{bids_dir.name}.old"
            if old.exists():
                shutil.rmtree(old)
            bids_dir.rename(old)
            tmp_dir.rename(bids_dir)
            shutil.rmtree(old)
        else:
            tmp_dir.rename(bids_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    result = pd.DataFrame(rows, columns=COLUMNS).sort_values(["unit", "series_id", "source"]).reset_index(drop=True)
    counts = result["status"].value_counts().to_dict()
    logger.info("BIDS dataset %s: %d output(s) named, %d under derivatives, %d skipped with a reason, %d failed",
                bids_dir, counts.get("bids", 0), counts.get("derivative", 0), counts.get("skipped", 0),
                counts.get("failed", 0))
    for _, r in result[result["status"].isin(["skipped", "failed"])].iterrows():
        logger.info("  %s %s %s: %s", r["unit"], r["series_id"], Path(r["source"]).name if r["source"] else "",
                    r["reason"])
    return result


def _check_labels(units: pd.DataFrame) -> None:
    """Two different subjects (or sessions of one subject) must not get one BIDS
    label once non-alphanumerics are removed (possible only with
    ``deid.keep_folder_names``; pseudonyms are alphanumeric)."""
    seen: dict[str, str] = {}
    for subject in sorted(set(units["subject"])):
        lab = label(subject)
        if lab in seen:
            raise DicomprepError(
                f"subjects '{seen[lab]}' and '{subject}' both become the BIDS label sub-{lab} once characters other "
                "than letters and digits are removed; rename one folder or turn deid.keep_folder_names off.")
        seen[lab] = subject
    for subject, grp in units.groupby("subject"):
        sessions: dict[str, str] = {}
        for scan in sorted(set(grp["scan"])):
            lab = label(scan)
            if lab in sessions:
                raise DicomprepError(
                    f"sessions '{sessions[lab]}' and '{scan}' of subject '{subject}' both become ses-{lab} in BIDS; "
                    "rename one folder or turn deid.keep_folder_names off.")
            sessions[lab] = scan


def _intended_for(planned: list[dict]) -> dict[tuple[str, str], list[str]]:
    """Per session: the func and dwi images a field map of that session serves
    (paths relative to the subject folder, as BIDS 1.x ``IntendedFor``)."""
    out: dict[tuple[str, str], list[str]] = {}
    for p in planned:
        if p["datatype"] in ("func", "dwi"):
            nii = p["feat"]["files"].get(".nii.gz") or p["feat"]["files"].get(".nii")
            ext = ".nii.gz" if nii.name.endswith(".nii.gz") else ".nii"
            rel = p["name"].split("/", 1)[1] + ext
            out.setdefault((p["sub"], p["ses"]), []).append(rel)
    return {k: sorted(v) for k, v in out.items()}


def _copy_stage_outputs(manifest: Path, out_dir: Path, unit_info: dict, tmp_dir: Path, deriv_root: str,
                        mode: str, enabled: bool) -> list[dict]:
    """CT volumes (ncct) and masks (seg): BIDS raw has no datatype for them, so
    they go under derivatives/dicomprep/sub-…/ses-…/<stage>/ with their names."""
    stage, unit = _stage_and_unit(manifest, out_dir)
    table = pd.read_parquet(manifest)
    rows = []
    if table.empty:
        return rows
    info = unit_info.get(unit)
    if info is None:
        return rows
    sub, ses = label(info["subject"]), label(info["scan"])
    folder = f"{deriv_root}/sub-{sub}" + (f"/ses-{ses}" if ses else "") + f"/{stage}"
    for _, m in table.sort_values("series_id").iterrows():
        outputs = [out_dir / p.strip() for p in str(m.get("outputs") or "").split(";") if p.strip()]
        for src in outputs:
            if not src.is_file():
                continue
            row = dict(unit=unit, series_key=m["series_key"], series_id=m["series_id"],
                       source=str(src.relative_to(out_dir)), rule=stage, bids_path="",
                       reason=f"{stage} output: BIDS raw data has no place for it")
            if not enabled:
                rows.append({**row, "status": "skipped",
                             "reason": row["reason"] + "; export.bids.derivatives is off"})
                continue
            _link(src, tmp_dir / folder / src.name, mode)
            rows.append({**row, "status": "derivative", "bids_path": f"{folder}/{src.name}"})
    return rows


def _write_dataset_files(root: Path, bcfg: dict, planned: list[dict], version: str, d2n_version: str,
                         derivatives: bool) -> None:
    generated = [{"Name": "dicomprep", "Version": version,
                  "Description": "de-identification and BIDS naming of dcm2niix outputs"}]
    if d2n_version:
        generated.append({"Name": "dcm2niix", "Version": d2n_version})
    _write_json(root / "dataset_description.json", {
        "Name": str(bcfg.get("name") or "dicomprep cohort"),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        **({"Authors": [str(a) for a in bcfg["authors"]]} if bcfg.get("authors") else {}),
        "GeneratedBy": generated,
    })
    subjects = sorted({p["sub"] for p in planned})
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    _write_json(root / "participants.json", {"participant_id": {
        "Description": "pseudonym derived by dicomprep from the patient ID with a keyed hash"}})
    (root / "README").write_text(
        "BIDS dataset written by dicomprep from its de-identified dcm2niix conversions.\n\n"
        "Subject and session labels are pseudonyms; sidecars keep acquisition parameters only.\n"
        "What BIDS raw data has no place for (CT volumes, segmentation masks, STEAM b-value tables)\n"
        "is under derivatives/dicomprep/; the HDF5 arrays stay in share/hdf5/ outside this dataset.\n"
        "Which series got which name, and why a series was left out, is in the BIDS table that the data\n"
        "holder keeps (private/bids/bids.parquet of the dicomprep run).\n")
    if derivatives:
        _write_json(root / "derivatives" / "dicomprep" / "dataset_description.json", {
            "Name": "dicomprep outputs without a BIDS raw datatype",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": generated,
        })


def bids_enabled(config: dict) -> bool:
    bcfg = (config.get("export") or {}).get("bids")
    return bool(bcfg.get("enabled", False)) if isinstance(bcfg, dict) else bool(bcfg)


def write_bids_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the result of :func:`build_bids` (parquet) atomically."""
    with atomic_path(Path(path)) as tmp:
        table.to_parquet(tmp, index=False)


def cohort_manifests(out_dir: str | os.PathLike, units: pd.DataFrame | None = None) -> tuple[list[Path], list[Path]]:
    """The standard places of the inputs of :func:`build_bids` for every unit of
    ``private/units.csv``: (dcm2niix manifests, ncct + seg manifests), those that exist."""
    out_dir = Path(out_dir)
    if units is None:
        units = pd.read_csv(out_dir / "private" / "units.csv", dtype=str, keep_default_na=False)
    lay = layout(out_dir)
    d2n = [lay.stage_manifest("dcm2niix", u) for u in units["unit"]]
    other = [lay.stage_manifest(stage, u) for u in units["unit"] for stage in ("ncct", "seg")]
    return [p for p in d2n if p.is_file()], [p for p in other if p.is_file()]


def build_cohort_bids(out_dir: str | os.PathLike, config: dict, *, log=None,
                      table_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """``share/bids/`` for the whole cohort of ``out_dir`` from the manifests in
    their standard places; the result table goes to ``private/bids/bids.parquet``
    (or ``table_path``). What ``dicomprep bids OUT`` runs."""
    out_dir = Path(out_dir)
    units_csv = out_dir / "private" / "units.csv"
    if not units_csv.is_file():
        raise DicomprepError(f"{out_dir} has no private/units.csv: run the workflow (or its select step) first.")
    manifests, others = cohort_manifests(out_dir)
    if not manifests:
        raise DicomprepError(f"{out_dir} has no dcm2niix manifests (private/stages/dcm2niix/<unit>/manifest.parquet): "
                             "run the conversion first (convert.dcm2niix.enabled: true).")
    table = build_bids(out_dir=out_dir, manifests=manifests, config=config, units_csv=units_csv,
                       derivative_manifests=others, log=log)
    write_bids_table(table, table_path or out_dir / "private" / "bids" / "bids.parquet")
    return table
