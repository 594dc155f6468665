"""Logging for people: one readable line per event, to the rule's log file."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def get_logger(name: str, log_path: str | Path | None = None, *, stderr: bool = True) -> logging.Logger:
    """A logger writing to ``log_path`` (appending) and to stderr."""
    logger = logging.getLogger(f"dicomprep.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    if stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    return logger
