"""Test helpers for DICOM we write: dciodvfy (dicom3tools) and a throw-away Orthanc."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ORTHANC_CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc")


def dciodvfy_errors(path) -> set[str]:
    """The ``Error`` lines dciodvfy reports for one file (normalised: values stripped)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/install-debian installs it")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    out = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Error"):
            out.add(re.sub(r"\s+", " ", re.sub(r"<[^>]*> *=", "", line)).strip())
    return out


def new_errors(written, source) -> set[str]:
    """dciodvfy errors of ``written`` that ``source`` does not have as well.

    Errors are compared by attribute name, so "Empty attribute X" in a copied
    Type 1C field that is empty in the source is not counted against the copy.
    """
    src = dciodvfy_errors(source)
    return {e for e in dciodvfy_errors(written) if e not in src}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str:
    for c in ORTHANC_CANDIDATES:
        found = shutil.which(c) or (c if os.path.isfile(c) and os.access(c, os.X_OK) else None)
        if found:
            return found
    pytest.skip("Orthanc (Debian package orthanc) is not installed; .ci/install-debian installs it")


class Orthanc:
    """REST client of a running Orthanc."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, raw: bool = False):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def post(self, path: str, data: bytes):
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def running_orthanc(workdir: Path, start_timeout: float = 30.0):
    """Start Orthanc on a free local port with a temporary config and storage;
    stop it by its PID afterwards (SIGTERM, then SIGKILL), whatever happens."""
    exe = orthanc_binary()
    port = _free_port()
    storage = workdir / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps({
        "Name": "dicomprep-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": port, "DicomServerEnabled": False, "DicomPort": _free_port(),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
        "HttpTimeout": 30, "StorageCompression": False}))
    log = open(workdir / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        client = Orthanc(port)
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (code {proc.returncode}); see {workdir / 'orthanc.log'}")
            try:
                client.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer on port {port} within {start_timeout:.0f} s")
                time.sleep(0.2)
        yield client
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()
