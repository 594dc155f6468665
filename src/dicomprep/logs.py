"""Logging for people: one readable line per event, to the rule's log file."""
from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _QuietErrors:
    """``handleError`` for people: when a log line cannot be written (disk full, closed
    stream) say so once, in one sentence on stderr, instead of logging's
    "--- Logging error ---" traceback for every line. The run's own error (if the
    disk is full, the next output write fails) is what stops the job."""

    _reported = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._report(sys.exc_info()[1])

    def flush(self) -> None:
        # close() and logging.shutdown() flush outside emit(), where an OSError
        # would escape as a traceback.
        try:
            super().flush()
        except OSError as exc:
            self._report(exc)
        except ValueError:          # the stream was closed already (interpreter shutdown)
            pass

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:      # the file's last buffered lines could not be written
            self._report(exc)
        except ValueError:
            pass

    def _report(self, exc) -> None:
        if self._reported:
            return
        self._reported = True
        where = getattr(self, "baseFilename", None) or getattr(getattr(self, "stream", None), "name", "stderr")
        try:
            hint = " The disk is full: free space and re-run." if getattr(exc, "errno", None) == errno.ENOSPC else ""
            sys.stderr.write(f"dicomprep: cannot write log lines to {where} ({exc}); "
                             f"further log lines there are lost.{hint}\n")
            sys.stderr.flush()
        except Exception:  # stderr itself is gone: nothing left to tell
            pass


class FileHandler(_QuietErrors, logging.FileHandler):
    """A log file whose write errors are reported once, without traceback."""


class StreamHandler(_QuietErrors, logging.StreamHandler):
    """A stream (stderr) whose write errors are reported once, without traceback."""


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
        fh = FileHandler(log_path, mode="a", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    if stderr:
        sh = StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    return logger
