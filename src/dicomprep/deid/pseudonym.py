"""The one home of pseudonym derivation (keyed, stateless).

Every pseudonym is an HMAC-SHA256 of the original value under the project
secret, so any job on any node derives the same value with no shared state
(ARCHITECTURE.md, "The output contract"):

* patient pseudonym  = HMAC(secret, "patient" | IssuerOfPatientID | PatientID)
* UID                = "2.25." + int(HMAC(secret, "uid" | uid)[:16 bytes])  (PS3.5 B.2)
* date offset (days) = derived from the patient key, one per patient, so intervals
  between a patient's dates are preserved
* short ids          = for scans, series, assessors, folder names
"""
from __future__ import annotations

import hashlib
import hmac
import os
import sys
from pathlib import Path

from ..errors import SecretMissing

#: Fixed secret of the embedded demo cohort. Never use it for real data.
DEMO_SECRET = b"dicomprep-demo-secret-not-for-real-data"
#: Crockford base32 alphabet without I, L, O, U: unambiguous when read aloud.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Date shifts are drawn from [-MAX_SHIFT, -MIN_SHIFT] days (always into the past).
MIN_SHIFT_DAYS = 365
MAX_SHIFT_DAYS = 3650


def _digest(secret: bytes, *parts: str) -> bytes:
    msg = "\x1f".join(parts).encode("utf-8")
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _base32(digest: bytes, length: int) -> str:
    value = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(chars)


def patient_key(patient_id: str, issuer: str = "") -> str:
    """The original identity a pseudonym is derived from: issuer + PatientID."""
    return f"{(issuer or '').strip()}|{(patient_id or '').strip()}"


def patient_pseudonym(secret: bytes, patient_id: str, issuer: str = "", prefix: str = "P") -> str:
    """Short readable pseudonym for a patient, e.g. ``P7K3M9Q2T``.

    Derived from IssuerOfPatientID (0010,0021) + PatientID (0010,0020).
    """
    return prefix + _base32(_digest(secret, "patient", patient_key(patient_id, issuer)), 8)


def short_id(secret: bytes, kind: str, *parts: str, length: int = 6) -> str:
    """Short pseudonym of any other value (scan folder, series key, assessor)."""
    return _base32(_digest(secret, kind, *parts), length)


def keyed_name(secret: bytes, kind: str, *parts: str, length: int = 6) -> str:
    """The one way to name anything in ``share/`` after input-derived values (a folder,
    a unit path, a series key): a keyed short id, never an unkeyed hash (sha1 of a
    folder name can be reversed by hashing candidate names)."""
    return short_id(secret, kind, *parts, length=length)


def disambiguate(secret: bytes, name: str, kind: str, *parts: str) -> str:
    """``name-XXXXXX``: two share names that collide, told apart by a keyed short id of
    what they came from (e.g. ``disambiguate(secret, unit, "unit", orig_unit)``)."""
    return f"{name}-{keyed_name(secret, kind, *parts)}"


def uid_pseudonym(secret: bytes, uid: str) -> str:
    """Replacement UID under the ``2.25`` root (PS3.5 B.2: UUID-derived UIDs).

    128 bits of the HMAC as a decimal integer: at most 39 digits, so the UID
    stays within 64 characters.
    """
    uid = uid.strip().rstrip("\x00")
    value = int.from_bytes(_digest(secret, "uid", uid)[:16], "big")
    return f"2.25.{value}"


def date_offset_days(secret: bytes, patient_id: str, issuer: str = "") -> int:
    """One date shift per patient (negative days), preserving intervals."""
    digest = _digest(secret, "date-offset", patient_key(patient_id, issuer))
    span = MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1
    return -(MIN_SHIFT_DAYS + int.from_bytes(digest[:8], "big") % span)


def secret_fingerprint(secret: bytes) -> str:
    """A fingerprint that identifies the secret in the audit without revealing it."""
    return hashlib.sha256(b"dicomprep-fingerprint" + secret).hexdigest()[:16]


#: Set to 1 (``dicomprep run --cluster`` does) to refuse a secret from the
#: environment: cluster schedulers save a job's environment where admins read it.
REQUIRE_FILE_ENV = "DICOMPREP_REQUIRE_SECRET_FILE"
_demo_notice_shown = False
#: The shortest secret accepted, from the environment or a file (bytes, surrounding blanks aside).
MIN_SECRET_BYTES = 16


def secret_must_come_from_file() -> bool:
    """True where a secret in ``DICOMPREP_SECRET`` would be exposed: the run
    was started for a cluster (``DICOMPREP_REQUIRE_SECRET_FILE=1``) or this
    process already runs inside a SLURM job, whose environment the scheduler
    has saved."""
    flag = os.environ.get(REQUIRE_FILE_ENV, "").strip().lower()
    return flag in ("1", "true", "yes") or "SLURM_JOB_ID" in os.environ


def check_secret_file(path: str | os.PathLike) -> Path:
    """Refuse a secret file that is missing, not a file, or readable/writable
    by anyone but its owner (like ssh does with a private key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SecretMissing(
            f"deid.secret_file: {path} does not exist. Create it with a long random "
            "string (e.g. `(umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > FILE)`) "
            "and keep it private."
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretMissing(
            f"deid.secret_file: {path} can be read or changed by other users (mode {mode:04o}). "
            f"The secret must be readable only by you: run `chmod 600 {path}` and start again."
        )
    return path


def load_secret(secret_file: str | os.PathLike | None = None, *, demo: bool = False,
                require_file: bool | None = None) -> bytes:
    """The project secret: ``DICOMPREP_SECRET``, else ``deid.secret_file``.

    The demo cohort uses :data:`DEMO_SECRET` (and says so once per process,
    only when it really does). Without a secret, refuse to start.
    ``require_file`` (default: :func:`secret_must_come_from_file`) refuses a
    secret from the environment, for runs on a cluster.
    """
    env = os.environ.get("DICOMPREP_SECRET")
    if env:
        if require_file is None:
            require_file = secret_must_come_from_file()
        if require_file:
            raise SecretMissing(
                "DICOMPREP_SECRET is set, but this run sends jobs to a cluster scheduler, which saves "
                "each job's environment (sbatch --export=ALL) where cluster administrators can read it. "
                "Unset it (`unset DICOMPREP_SECRET`), put the secret in a file only you can read "
                "(`(umask 077; echo \"$SECRET\" > ~/.dicomprep_secret)`) and set "
                "deid.secret_file to that file (e.g. --config deid.secret_file=~/.dicomprep_secret)."
            )
        secret = env.strip().encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretMissing(
                f"DICOMPREP_SECRET holds fewer than {MIN_SECRET_BYTES} bytes: a short secret can be guessed, "
                "and with it every pseudonym, UID and date shift undone. Use a long random one, e.g. "
                "export DICOMPREP_SECRET=$(python -c 'import secrets; print(secrets.token_hex(32))') (keep it).")
        return env.encode("utf-8")
    if secret_file:
        path = check_secret_file(secret_file)
        data = path.read_bytes().strip()
        if len(data) < MIN_SECRET_BYTES:
            raise SecretMissing(f"deid.secret_file: {path} holds fewer than {MIN_SECRET_BYTES} bytes; "
                                "use a long random secret.")
        return data
    if demo:
        global _demo_notice_shown
        if not _demo_notice_shown:
            _demo_notice_shown = True
            print("dicomprep: the demo cohort uses the fixed demo secret; never use it for real data.",
                  file=sys.stderr)
        return DEMO_SECRET
    raise SecretMissing(
        "De-identification needs a secret and none was given. Set the environment "
        "variable DICOMPREP_SECRET or the config key deid.secret_file to a file holding "
        "a long random string (on a cluster: the file, readable only by you). "
        "Keep it: the same secret gives the same pseudonyms."
    )


def secret_for_config(config: dict, *, demo: bool = False) -> bytes | None:
    """The secret of a run from its config (``deid.secret_file``, else
    ``DICOMPREP_SECRET``, the demo secret for the demo). ``None`` only when
    ``anonymisation`` is off and no secret is given; otherwise a missing secret
    raises :class:`SecretMissing` with the fix."""
    try:
        return load_secret(((config or {}).get("deid") or {}).get("secret_file"), demo=demo)
    except SecretMissing:
        if (config or {}).get("anonymisation", True):
            raise
        return None


def time_offset_seconds(secret: bytes, patient_id: str, issuer: str = "") -> int:
    """One time-of-day shift per patient: between 15 minutes and 4 hours earlier (negative seconds).

    Added to the date offset when a date and its time (or a DT) are shifted
    together, so times of day do not survive and intervals between a patient's
    date-times are preserved. Bounded so that acquisitions made between 04:00 and
    24:00 never cross midnight (a series split over two dates confuses converters).
    """
    digest = _digest(secret, "time-offset", patient_key(patient_id, issuer))
    return -(MIN_TIME_SHIFT_S + int.from_bytes(digest[:8], "big") % (MAX_TIME_SHIFT_S - MIN_TIME_SHIFT_S + 1))


#: Time-of-day shifts are drawn from [-MAX_TIME_SHIFT_S, -MIN_TIME_SHIFT_S] seconds.
MIN_TIME_SHIFT_S = 15 * 60
MAX_TIME_SHIFT_S = 4 * 3600


def uid_pseudonym_fixed_length(secret: bytes, uid: str, length: int) -> str:
    """A keyed replacement UID of exactly ``length`` characters (``2.25.`` + digits).

    For UIDs embedded in binary vendor blobs (e.g. ``tReferenceImage`` in the
    Siemens CSA series header), where the byte length must not change.
    """
    uid = uid.strip().rstrip("\x00")
    digits = str(int.from_bytes(_digest(secret, "uid-fixed", uid), "big"))
    while len(digits) < length:
        digits += str(int.from_bytes(_digest(secret, "uid-fixed", uid, digits), "big"))
    body = ("2.25." + digits)[:length]
    return body if not body.endswith(".") else body[:-1] + "1"
