"""Bridge from a Snakemake ``script:`` to a package function.

Scripts stay one line (``run(snakemake, "dicomprep.x:func")``); the package
never imports snakemake. A :class:`DicomprepError` becomes a sentence in the
log and exit status 1, without a traceback.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from .errors import DicomprepError
from .logs import get_logger


def _named(io: Any) -> dict:
    try:
        return {k: v for k, v in io.items()}
    except AttributeError:
        return {}


def run(smk: Any, target: str) -> Any:
    """Call ``module:function`` with the job's inputs, outputs, log, params, config.

    The function receives keyword arguments: ``input`` / ``output`` (dicts of
    named files, plus ``input_files`` / ``output_files`` lists), ``log`` (first
    log file or None), ``config``, ``wildcards`` (dict), ``threads`` and every
    param by name.
    """
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    log = smk.log[0] if len(smk.log) else None
    kwargs = dict(
        input=_named(smk.input), output=_named(smk.output),
        input_files=list(smk.input), output_files=list(smk.output),
        log=log, config=dict(smk.config), wildcards=_named(smk.wildcards),
        threads=smk.threads,
    )
    kwargs.update(_named(smk.params))
    try:
        return func(**kwargs)
    except DicomprepError as exc:
        get_logger("entry", log).error(str(exc))
        sys.exit(1)
