"""pipeline: stale-output removal only ever touches share/."""
from __future__ import annotations

import pandas as pd

from dicomprep.pipeline import remove_listed_outputs


def test_removes_listed_share_files_and_nothing_outside(tmp_path):
    out = tmp_path / "out"
    keep = tmp_path / "input.dcm"                 # e.g. an original, named by a bad manifest
    keep.write_bytes(b"x")
    a = out / "share" / "nifti" / "u" / "a.nii.gz"
    b = out / "share" / "dicom" / "u" / "s001" / "0001.dcm"
    for f in (a, b):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    manifest = pd.DataFrame({"outputs": ["share/nifti/u/a.nii.gz;../input.dcm", ""],
                             "output_path": ["", str(b)]})
    assert remove_listed_outputs(out, manifest) == 2
    assert not a.exists() and not b.exists() and keep.exists()
    assert remove_listed_outputs(out, out / "missing.parquet") == 0
