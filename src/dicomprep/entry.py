"""Bridge from a Snakemake ``script:`` to its adapter in :mod:`dicomprep.stages`.

Scripts stay one line (``run(snakemake, "dicomprep.stages:deidentify")``); the
package never imports snakemake. The adapter receives the rule's named inputs,
outputs and params, its wildcards, ``log``, ``threads`` and ``config`` as
keyword arguments, and nothing else, so a misspelt name is an error. A
:class:`DicomprepError` (a user or data-level problem the job cannot go past)
becomes one sentence in the log and on stderr and exit status 1, without a
traceback; any other exception fails the job with its traceback in the log.
"""
from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

from .errors import DicomprepError
from .logs import get_logger


def _value(v: Any) -> Any:
    """A Snakemake IO value as plain data: a path string, or a list of them."""
    if isinstance(v, (str, bool, int, float)) or v is None:
        return v
    if isinstance(v, dict):
        return v
    try:
        return [str(x) for x in v]
    except TypeError:
        return v


def _named(io: Any) -> dict:
    try:
        return {k: _value(v) for k, v in io.items()}
    except AttributeError:
        return {}


def job_arguments(smk: Any) -> dict:
    """The adapter's keyword arguments for a Snakemake job (names must not clash)."""
    kwargs: dict = {"log": smk.log[0] if len(smk.log) else None,
                    "config": dict(smk.config), "threads": smk.threads}
    for part in (smk.input, smk.output, smk.params, smk.wildcards):
        for name, value in _named(part).items():
            if name in kwargs:
                raise TypeError(f"rule {getattr(smk, 'rule', '?')}: the name {name!r} is used twice "
                                "(inputs, outputs, params and wildcards must have distinct names)")
            kwargs[name] = value
    return kwargs


def _without_network_libraries() -> None:
    """No network at run time: a job never downloads, so ``import requests`` fails in
    it. pydicom imports ``requests`` (and urllib3, ssl ...) at import time, only to
    fetch its own test files (``pydicom.data``), and falls back without it: 0.06-0.14 s
    of every job's start."""
    if "requests" not in sys.modules:
        sys.modules["requests"] = None  # type: ignore[assignment]  # makes the import raise ImportError


def run(smk: Any, target: str) -> Any:
    """Call ``module:function`` with the job's arguments (see module docstring)."""
    _without_network_libraries()
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    kwargs = job_arguments(smk)
    try:
        return func(**kwargs)
    except DicomprepError as exc:
        logger = get_logger("entry", kwargs["log"])
        logger.error(str(exc))
        sys.exit(1)
    except Exception:
        if kwargs["log"]:
            with open(kwargs["log"], "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
        raise
