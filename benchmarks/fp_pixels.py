"""False-alarm rate of the burned-in text screen on every real image series in the
shared test data (none of which carries burned-in text).

Each instance goes through ``dicomprep.deid.pixels.screen_instance`` (quarantine
mode: nothing is re-encoded); a series is a false alarm if any of its images is
found to hold text. Prints one JSON line per series, then the totals.

    PYTHONPATH=src .venv/bin/python benchmarks/fp_pixels.py [DATA]
"""
from __future__ import annotations

import collections
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SKIP_SUFFIXES = (".nii", ".nii.gz", ".json", ".bval", ".bvec", ".nrrd", ".txt", ".md")
SKIP_NAMES = {"LICENSE", "LICENSE.txt", "SHA256SUMS", "DICOMDIR", "DIRFILE", "README.md"}


def main() -> None:
    import pydicom

    from dicomprep import dicomio
    from dicomprep.deid import pixels

    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "DICOMPREP_TESTDATA", str(ROOT.parent / "shared" / "data")))
    series: dict[tuple, list[str]] = collections.defaultdict(list)
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            if name.endswith(SKIP_SUFFIXES) or name in SKIP_NAMES:
                continue
            path = os.path.join(dirpath, name)
            try:
                ds = pydicom.dcmread(io.BytesIO(dicomio.read_bytes(path)), force=True, stop_before_pixels=True)
            except Exception:
                continue
            if "SOPClassUID" in ds:
                key = (str(ds.get("SeriesInstanceUID")), str(ds.get("SeriesNumber")), os.path.dirname(path))
                series[key].append(path)
    n_series = n_flagged = n_inst = n_inst_flagged = n_ocr = 0
    seconds = 0.0
    for key, paths in sorted(series.items()):
        settings = pixels.PixelSettings(mode="quarantine")
        hits = []
        for path in paths:
            _, found = pixels.screen_instance(dicomio.read_bytes(path), settings)
            if found:
                hits.append((os.path.basename(path), found))
        c = settings.counts
        if not c["instances_screened"]:
            continue
        n_series += 1
        n_flagged += bool(hits)
        n_inst += c["instances_screened"]
        n_inst_flagged += len(hits)
        n_ocr += c["instances_ocr"]
        seconds += settings.seconds
        print(json.dumps({"series": f"{os.path.relpath(key[2], root)} #{key[1]}", "instances": len(paths),
                          **c, "seconds": round(settings.seconds, 2), "hits": hits[:3]}), flush=True)
    print(f"image series: {n_series}, flagged (false alarms): {n_flagged} ({100 * n_flagged / max(n_series, 1):.1f}%); "
          f"instances: {n_inst}, flagged: {n_inst_flagged}, OCRed: {n_ocr} ({100 * n_ocr / max(n_inst, 1):.1f}%); "
          f"screen time {seconds:.1f} s")


if __name__ == "__main__":
    main()
