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
