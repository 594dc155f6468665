"""Configuration: load, fill defaults from config/schema.yaml, refuse errors early.

The Snakefile validates with ``snakemake.utils.validate`` (which fills the
schema's defaults) and then calls :func:`check_config` for the checks a schema
cannot express; the CLI uses :func:`load_config`, which does both without
snakemake. Errors name the key and what is allowed.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import jsonschema
import yaml

from .deid.edits import check_edits
from .errors import ConfigError


def workflow_root() -> Path:
    """The folder holding the Snakefile, config/, workflow/, scripts/, envs/, profiles/.

    ``DICOMPREP_WORKFLOW`` overrides; then the checkout this package runs from
    (an editable install, or ``PYTHONPATH=src``); then the copy a built wheel
    carries in ``dicomprep/workflow/`` (see setup.py).
    """
    env = os.environ.get("DICOMPREP_WORKFLOW")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent, here / "workflow"):
        if (candidate / "Snakefile").is_file() and (candidate / "config" / "schema.yaml").is_file():
            return candidate
    raise ConfigError(
        "Cannot find the dicomprep workflow (Snakefile): this installation is incomplete. Reinstall "
        "(`pip install dicomprep`, or `pip install -e .` in a checkout), or set DICOMPREP_WORKFLOW "
        "to a folder holding the Snakefile."
    )


def schema_path() -> Path:
    return workflow_root() / "config" / "schema.yaml"


def load_schema() -> dict:
    with open(schema_path()) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance: Any, schema: dict) -> Any:
    """Fill defaults recursively (objects only), as snakemake.utils.validate does."""
    if schema.get("type") == "object" or "properties" in schema:
        if instance is None:
            instance = copy.deepcopy(schema.get("default", {}))
        if isinstance(instance, dict):
            for key, sub in schema.get("properties", {}).items():
                if key not in instance and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
                if key in instance and isinstance(sub, dict):
                    instance[key] = _fill_defaults(instance[key], sub)
    return instance


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def describe_error(error: jsonschema.ValidationError) -> str:
    """One sentence naming the key, what was given, and what is allowed."""
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return (
            f"config: unknown key {', '.join(repr(e) for e in extra)} {where}. "
            f"Allowed keys: {', '.join(allowed)}. See config/README.md."
        )
    if error.validator == "enum":
        return f"config: '{key}' is {error.instance!r}; allowed values: {', '.join(map(str, error.validator_value))}."
    if error.validator == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"config: '{key}' is {error.instance!r} ({type(error.instance).__name__}); it must be of type {want}."
    return f"config: '{key}': {error.message}. See config/README.md."


def validate_config(config: dict) -> dict:
    """Validate against the schema and fill defaults; raise ConfigError on the first error."""
    schema = load_schema()
    config = _fill_defaults(copy.deepcopy(config or {}), schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(describe_error(errors[0]))
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Checks the schema cannot express: paths exist, ranges are ordered."""
    inp = config.get("input_dir", "demo")
    if inp != "demo" and not Path(inp).is_dir():
        raise ConfigError(
            f"config: input_dir '{inp}' is not a folder. Give the folder of DICOM files to prepare, "
            "or `demo` for the embedded demo cohort."
        )
    out = Path(config.get("output_dir", "results"))
    if inp != "demo":
        try:
            out.resolve().relative_to(Path(inp).resolve())
            raise ConfigError(
                f"config: output_dir '{out}' is inside input_dir '{inp}'. The input tree is never "
                "written to; choose an output folder outside it."
            )
        except ValueError:
            pass
    thick = config.get("convert", {}).get("ncct", {}).get("thickness")
    if thick and thick[0] > thick[1]:
        raise ConfigError(f"config: convert.ncct.thickness {thick} must be [min, max] with min <= max.")
    for key in ("subjects_file", "exclude_subjects_file"):
        value = config.get("select", {}).get(key)
        if value and not Path(value).is_file():
            raise ConfigError(f"config: select.{key} '{value}' does not exist. Give a text file with one subject per line.")
    for key in ("philips_log",):
        value = config.get("convert", {}).get("steam", {}).get(key)
        if value and not Path(value).is_file():
            raise ConfigError(f"config: convert.steam.{key} '{value}' does not exist.")
    if (config.get("deid", {}) or {}).get("edits"):
        check_edits(config)              # refuses edits that would put back an identifier
    table = config.get("seg", {}).get("table")
    if table and not Path(table).is_file():
        raise ConfigError(f"config: seg.table '{table}' does not exist. Give a CSV or Excel file.")
    bids = config.get("export", {}).get("bids") or {}
    if isinstance(bids, dict) and bids.get("rules"):
        # lazy: every Snakemake job loads config (the Snakefile validates it); BIDS pulls nibabel
        from .export.bids import rules_from_config

        rules_from_config(bids)      # BIDS heuristics: refuse a bad rule before any work
    check_patterns(config)


def validate_workflow_config(config: dict, basedir: str, validate: Callable) -> None:
    """Coerce ``--config`` text, validate against the schema (filling defaults
    in place, as ``snakemake.utils.validate`` does), then the checks a schema
    cannot express. Raises :class:`ConfigError` naming the key."""
    coerce_command_line_values(config)
    try:
        validate(config, schema=str(Path(basedir) / "config" / "schema.yaml"))
    except Exception as exc:  # re-explain the schema error as one sentence naming the key
        validate_config(config)  # raises ConfigError with the sentence
        raise ConfigError(f"config: {exc}") from None
    check_config(config)


def _compile(key: str, pattern: Any) -> None:
    try:
        re.compile(str(pattern), re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(
            f"config: {key} {str(pattern)!r} is not a valid regular expression ({exc}). "
            "Fix the pattern (escape special characters such as ( [ + * ? with a backslash)."
        ) from None


def check_patterns(config: dict) -> None:
    """Compile every regular expression of the config before any work is done:
    ``select.include/exclude.<column>.regex``, ``seg.segmentor/name/assessor`` and
    ``seg.merge[].segmentation``; a bad one is refused with its key."""
    select = config.get("select") or {}
    for where in ("include", "exclude"):
        for column, cond in (select.get(where) or {}).items():
            if isinstance(cond, dict):
                unknown = set(cond) - {"regex", "min", "max"}
                if unknown:
                    raise ConfigError(f"config: select.{where}.{column}: unknown condition "
                                      f"{', '.join(sorted(map(str, unknown)))}; use regex, min or max.")
                if "regex" in cond:
                    _compile(f"select.{where}.{column}.regex", cond["regex"])
    seg = config.get("seg") or {}
    for key in ("segmentor", "name", "assessor"):
        if seg.get(key):
            _compile(f"seg.{key}", seg[key])
    for i, rule in enumerate(seg.get("merge") or []):
        if isinstance(rule, dict) and rule.get("segmentation"):
            _compile(f"seg.merge[{i}].segmentation", rule["segmentation"])


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (default: config/config.yaml), apply overrides, validate."""
    path = Path(path) if path else workflow_root() / "config" / "config.yaml"
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    return validate_config(config)


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (as ``--config a.b.c=1`` would)."""
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def schema_markdown(schema: dict | None = None) -> str:
    """A Markdown table of every key (path, type, default, description)."""
    schema = schema or load_schema()
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]

    def walk(node: dict, prefix: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            path = f"{prefix}{key}"
            typ = sub.get("type", "")
            typ = " or ".join(typ) if isinstance(typ, list) else typ
            if "enum" in sub:
                typ = " \\| ".join(map(str, sub["enum"]))
            default = "" if sub.get("type") == "object" else json.dumps(sub.get("default"))
            desc = " ".join(str(sub.get("description", "")).split())
            lines.append(f"| `{path}` | {typ} | {default} | {desc} |")
            if "properties" in sub:
                walk(sub, path + ".")

    walk(schema, "")
    return "\n".join(lines)


def coerce_command_line_values(config: dict, schema: dict | None = None) -> dict:
    """Turn text from ``snakemake --config key=value`` into the schema's type.

    Snakemake passes ``anonymisation=false`` as the string "false"; where the
    schema wants a boolean, number or list, the text is parsed as YAML. Also
    accepts dotted keys (``convert.ncct.spacing_mm=1``) by nesting them.
    """
    schema = schema or load_schema()
    for key in [k for k in list(config) if isinstance(k, str) and "." in k]:
        set_dotted(config, key, config.pop(key))

    def walk(node: dict, sch: dict) -> None:
        props = sch.get("properties") or {}
        for key, value in list(node.items()):
            sub = props.get(key)
            if not isinstance(sub, dict):
                continue
            types = sub.get("type")
            types = types if isinstance(types, list) else [types]
            if isinstance(value, str) and "string" not in types:
                try:
                    node[key] = yaml.safe_load(value)
                except yaml.YAMLError:
                    pass
            elif isinstance(value, dict) and "properties" in sub:
                walk(value, sub)

    walk(config, schema)
    return config
