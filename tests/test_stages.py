"""The workflow adapters (dicomprep.stages) take exactly their rule's arguments.

Each ``scripts/*.py`` calls one adapter through ``entry.run``, which passes the
rule's named inputs, outputs and params, its wildcards, ``log``, ``threads`` and
``config`` as keyword arguments. An adapter with the same names and no
``**kwargs`` makes a misspelt or missing name a TypeError, not a silent default.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SECTIONS = ("input", "output", "params")
#: Input functions a rule unpacks (``unpack(f)``), and the names their dicts have.
_UNPACKED = {"converted_outputs": ("dcm2niix", "ncct", "seg")}


def _rules() -> dict[str, dict]:
    """{script file name: {"rule": name, "names": named inputs/outputs/params, "wildcards": set}}."""
    out = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", text):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            script = re.search(r'\n    script:\n        "[./]*scripts/(\w+\.py)"', block)
            if not head or not script:
                continue
            names: set[str] = set()
            for section in re.finditer(r"^    (\w+):\n((?:        .*\n|\n)*)", block, re.M):
                if section.group(1) in _SECTIONS:
                    names |= set(re.findall(r"^        (\w+)=", section.group(2), re.M))
            for func in re.findall(r"^        unpack\((\w+)\),", block, re.M):
                names |= set(_UNPACKED[func])
            wildcards = set(re.findall(r'"\{(\w+)\}"', block))
            out[script.group(1)] = {"rule": head.group(1), "names": names, "wildcards": wildcards}
    return out


def _target(script: Path):
    module, func = re.search(r'run\(snakemake, "([\w.]+):(\w+)"\)', script.read_text()).groups()
    return getattr(importlib.import_module(module), func)


RULES = _rules()


def test_unpacked_input_functions_give_the_listed_names():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    for func, names in _UNPACKED.items():
        body = re.search(rf"def {func}\(wildcards\):\n(.*?)\n\n", common, re.S).group(1)
        assert "(" + ", ".join(f'"{n}"' for n in names) + ")" in body, func


def test_every_script_is_a_rule_with_an_adapter():
    scripts = {p.name for p in (ROOT / "scripts").glob("*.py")}
    assert scripts == set(RULES)


@pytest.mark.parametrize("script", sorted(RULES))
def test_adapter_takes_exactly_the_rules_arguments(script):
    func = _target(ROOT / "scripts" / script)
    params = inspect.signature(func).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), f"{func.__name__}: keyword-only"
    rule = RULES[script]
    want = rule["names"] | rule["wildcards"] | {"log", "config", "threads"}
    assert {p.name for p in params} == want, rule["rule"]


def test_a_misspelt_argument_is_an_error(tmp_path):
    from dicomprep import stages

    with pytest.raises(TypeError):
        stages.demo_input(flag=str(tmp_path / ".complete"), log=None, config={}, threads=1, sed=3)


def test_a_job_starts_without_network_libraries(tmp_path):
    """No network at run time: in a job (``entry.run``) ``import requests`` fails, so
    pydicom's import (which tries it for downloading its test files) does not load
    requests, urllib3 and ssl into every job; pydicom still reads a file."""
    import subprocess
    import sys

    (tmp_path / "probe_stage.py").write_text(
        "import sys\n"
        "def probe(*, log, config, threads, path):\n"
        "    import pydicom\n"
        "    from pydicom.data import download\n"
        "    try:\n"
        "        import requests  # noqa: F401\n"
        "        importable = True\n"
        "    except ImportError:\n"
        "        importable = False\n"
        "    ds = pydicom.dcmread(path)\n"
        "    print(importable, download.HAVE_REQUESTS, 'urllib3' in sys.modules, ds.Rows)\n")
    dicom = next(p for p in sorted(Path(__import__("pydicom").__file__).parent.joinpath("data").rglob("*.dcm"))
                 if p.stat().st_size < 200_000)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from types import SimpleNamespace as N\n"
            "from dicomprep.entry import run\n"
            "empty = {}\n"
            "smk = N(log=[], config={}, threads=1, input=empty, output=empty, wildcards=empty,\n"
            "        params={'path': sys.argv[2]}, rule='probe')\n"
            "run(smk, 'probe_stage:probe')\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(dicom)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[:3] == ["False", "False", "False"] and int(out[3]) > 0, out
