"""Errors meant for a person: what went wrong, where, and what to do."""
from __future__ import annotations


class DicomprepError(Exception):
    """Base class: the message is shown to the user as-is, without a traceback."""


class ConfigError(DicomprepError):
    """The configuration is invalid; the message names the key and the fix."""


class UnreadableDicom(DicomprepError):
    """A file could not be read as DICOM; the message is the reason for the table."""


class SecretMissing(ConfigError):
    """De-identification needs a secret and none was given."""


#: errno values that mean the machine, not the data, is at fault (PS: a job
#: failing for these is redone by Snakemake; a data problem is a reason row).
_ENVIRONMENT_ERRNOS = {
    28,   # ENOSPC: no space left on device
    122,  # EDQUOT: disk quota exceeded
    13,   # EACCES: permission denied
    1,    # EPERM: operation not permitted
    30,   # EROFS: read-only file system
    5,    # EIO: input/output error
    12,   # ENOMEM
    24,   # EMFILE: too many open files
}


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the environment's fault (disk full, no permission, out
    of memory, a missing tool) rather than the data's. Such errors must fail the
    job so that Snakemake removes its outputs and the next run redoes it; a
    data problem becomes a reason row and the job succeeds."""
    if isinstance(exc, (MemoryError, KeyboardInterrupt, SystemExit, EnvironmentProblem)):
        return True
    if isinstance(exc, OSError) and getattr(exc, "errno", None) in _ENVIRONMENT_ERRNOS:
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and isinstance(cause, OSError) and is_environment_error(cause)


class EnvironmentProblem(DicomprepError):
    """The machine is at fault (disk full, missing tool, killed helper process):
    the job fails and is redone on the next run; the message says what to fix."""
