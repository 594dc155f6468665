"""Issue 13 item 6: every pseudonymous name in share/ comes from the keyed function in
pseudonym.py, never from an unkeyed hash of input-derived values."""
from __future__ import annotations

import hashlib

import pandas as pd

from dicomprep.deid import pseudonym
from dicomprep.deid.unit import deidentify_unit
from dicomprep.deid.dataset import make_deidentifier

SECRET = b"test-secret-0123456789abcdef-xyz"


def test_colliding_series_folders_get_keyed_suffixes(testdata, tmp_path):
    files = sorted((testdata / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2").iterdir())[:2]
    instances = pd.DataFrame({"path": [str(f) for f in files], "series_key": ["keyA", "keyB"],
                              "series_id": ["s001", "s001"], "kind": ["image", "image"]})
    folders = {}
    for secret in (SECRET, b"another-secret-0123456789abcdef"):
        deid = make_deidentifier({"deid": {}}, secret)
        manifest, _, _ = deidentify_unit(instances, share_dir=tmp_path / secret.hex()[:8], deid=deid,
                                         drop_cfg={"max_instances": 0})
        folders[secret] = dict(zip(manifest["series_key"], manifest["series_id"]))
    got = folders[SECRET]
    assert got == {"keyA": "s001-" + pseudonym.short_id(SECRET, "series-folder", "keyA"),
                   "keyB": "s001-" + pseudonym.short_id(SECRET, "series-folder", "keyB")}
    assert got["keyA"] != folders[b"another-secret-0123456789abcdef"]["keyA"]  # keyed: the secret matters
    assert hashlib.sha1(b"keyA").hexdigest()[:6] not in got["keyA"]
    assert pseudonym.disambiguate(SECRET, "u", "unit", "a/b") == "u-" + pseudonym.keyed_name(SECRET, "unit", "a/b")
