"""One ``dicomprep run`` per output folder; a crashed run's stale lock is cleared.

Snakemake locks an output folder while it runs (``.snakemake/locks/``). After a
crash (``kill -9``, a power cut) the lock stays and the next run is refused
until ``--unlock``. :class:`RunLock` tells a stale lock from a live run:

* ``dicomprep run`` holds an OS lock (``flock``) on
  ``OUT/.snakemake/dicomprep-run.lock`` for as long as it runs, so a second
  ``dicomprep run`` on the same folder is refused at once, before it writes
  anything there;
* a Snakemake lock with no live holder (no ``dicomprep run`` holding the OS
  lock and, where ``/proc`` exists, no Snakemake process working in OUT) is
  stale: the caller unlocks and resumes (``rerun-incomplete``).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DicomprepError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None


class RunLock:
    """Context manager: hold the run lock of ``out_dir`` or refuse with a sentence."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.state_dir = self.out_dir / ".snakemake"
        self.path = self.state_dir / "dicomprep-run.lock"
        self._fh = None

    def __enter__(self) -> "RunLock":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise DicomprepError(
                    f"another dicomprep run is working on {self.out_dir} right now; wait for it to finish "
                    "(or stop it) before starting another run on the same output folder.") from None
        if self._snakemake_alive():
            fh.close()
            raise DicomprepError(
                f"a Snakemake process is working on {self.out_dir} right now; wait for it to finish "
                "(or stop it) before starting another run on the same output folder.")
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def private_file(self, name: str) -> Path:
        """A file of this run under ``.snakemake/`` (never in share/ or private/)."""
        return self.state_dir / f"dicomprep-{name}"

    def stale_snakemake_lock(self) -> bool:
        """Snakemake's lock files exist although no process holds them."""
        locks = self.state_dir / "locks"
        return locks.is_dir() and any(locks.iterdir()) and not self._snakemake_alive()

    def _snakemake_alive(self) -> bool:
        """Whether a Snakemake process (other than ours) works in OUT (Linux /proc; else False)."""
        proc = Path("/proc")
        if not proc.is_dir():
            return False
        me = os.getpid()
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) in (me, os.getppid()):
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if not any(b"snakemake" in part for part in cmdline[:4]):
                    continue
                if Path(os.readlink(entry / "cwd")).resolve() == self.out_dir:
                    return True
                joined = b" ".join(cmdline)
                if str(self.out_dir).encode() in joined and b"--directory" in joined:
                    return True
            except (OSError, ValueError):
                continue
        return False
