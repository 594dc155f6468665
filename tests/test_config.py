"""Config: defaults filled, unknown/mistyped keys refused with the key named."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from dicomprep.config import load_config, load_schema, validate_config
from dicomprep.errors import ConfigError


def _key_paths(schema, prefix=""):
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(sub, dict) and "properties" in sub:
            yield from _key_paths(sub, path + ".")


def test_defaults_are_filled():
    cfg = validate_config({})
    assert cfg["input_dir"] == "demo"
    assert cfg["deid"]["options"]["retain_longitudinal_modified_dates"] is True
    assert cfg["convert"]["ncct"]["matrix"] == [512, 512]
    assert cfg["export"]["hdf5"]["mode"] == "3d"


def test_unknown_key_is_refused_with_its_name():
    with pytest.raises(ConfigError) as err:
        validate_config({"convert": {"ncct": {"spacing": 0.5}}})
    msg = str(err.value)
    assert "'spacing'" in msg and "convert.ncct" in msg and "spacing_mm" in msg


def test_mistyped_value_is_refused_with_key_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        validate_config({"layout": "xnatt"})
    assert "layout" in str(err.value) and "xnat" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_config({"convert": {"ncct": {"spacing_mm": "half"}}})
    assert "convert.ncct.spacing_mm" in str(err.value)


def test_missing_input_dir_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_config({"input_dir": str(tmp_path / "nope")})
    assert "input_dir" in str(err.value)


def test_output_inside_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="inside input_dir"):
        validate_config({"input_dir": str(tmp_path), "output_dir": str(tmp_path / "out")})


def test_shipped_config_is_valid(repo_root):
    cfg = load_config(repo_root / "config" / "config.yaml")
    assert cfg["input_dir"] == "demo"


def test_every_schema_key_is_documented(repo_root):
    text = (repo_root / "config" / "README.md").read_text()
    missing = [p for p in _key_paths(load_schema()) if f"`{p}`" not in text]
    assert not missing, f"config/README.md does not document: {missing}"


def test_cli_refuses_bad_config_without_traceback(tmp_path, repo_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"deid": {"presett": "cdti"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "dicomprep", "run", "demo", str(tmp_path / "out"), "--configfile", str(bad), "-n"],
        capture_output=True, text=True, cwd=repo_root,
        env={"PYTHONPATH": str(repo_root / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "presett" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("section, key", [
    ({"select": {"include": {"SeriesDescription": {"regex": "DWI(["}}}}, "select.include.SeriesDescription.regex"),
    ({"select": {"exclude": {"ProtocolName": {"regex": "*scout"}}}}, "select.exclude.ProtocolName.regex"),
    ({"seg": {"name": "liver)"}}, "seg.name"),
    ({"seg": {"merge": [{"new": "x", "from": ["a"], "segmentation": "[a-"}]}}, "seg.merge[0].segmentation"),
])
def test_bad_regex_is_refused_before_any_work_with_its_key(section, key):
    """Issue 12.6: a regex that does not compile is refused by the config check (which
    the CLI and the Snakefile run before indexing), naming the key."""
    with pytest.raises(ConfigError) as err:
        validate_config(section)
    assert key in str(err.value) and "regular expression" in str(err.value)


def test_good_regexes_pass():
    validate_config({"select": {"include": {"SeriesDescription": {"regex": "^(DWI|dti)"}}}, "seg": {"name": "liver"}})


def test_logging_error_is_one_sentence_not_tracebacks(capfd):
    """Issue 12.6: a full disk (/dev/full refuses every write) gives one line on stderr,
    not one "--- Logging error ---" traceback per log line."""
    from dicomprep.logs import get_logger

    logger = get_logger("diskfull-test", "/dev/full", stderr=False)
    for i in range(12):
        logger.info("line %d", i)
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "/dev/full" in lines[0] and "disk is full" in lines[0]
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()                                    # flushing the rest: no second line, no traceback
    assert capfd.readouterr().err == ""
