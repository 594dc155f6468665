"""Folder hierarchy -> units ``{group}/{sequence}/{subject}/{scan}`` (private keys).

Every indexed file gets four *original* keys, ``orig_group``,
``orig_sequence``, ``orig_subject`` and ``orig_scan`` (joined by ``/`` into
``orig_unit``). They stay in ``private/``; ``select.py`` turns them into the
share-safe unit. Layouts (config key ``layout``):

``cdti``
    ``<group>/dicom/<SEQUENCE>/<subject>/<scan>/.../file``: the literal folder
    ``dicom`` (any case) at the second level. Keys: group, SEQUENCE, subject,
    scan. The pattern is also looked for in the folders *above* the input
    folder, so pointing ``input_dir`` at one scan folder (a single flat folder
    of DICOM inside a cDTI tree) or at ``<group>`` keeps the same keys. A file
    that matches the pattern nowhere falls back to the ``dicom`` rule.
``xnat``
    An XNAT session folder holding ``SCANS/<n>/DICOM/...`` and/or
    ``ASSESSORS/<name>/SEG/...`` (any case; also the REST download form
    ``scans/<id>-<desc>/resources/DICOM/files/...``). Keys: group ``xnat``;
    sequence = project folder (the folder before an ``arcNNN`` archive folder,
    or the second folder above the session) else ``xnat``; subject = the
    folder above the session when there is no ``arcNNN`` folder, else
    PatientID; scan = the session folder. Files outside a session fall back
    to the ``dicom`` rule. :func:`read_xnat_catalog` reads the catalog XML of
    an assessor (createdBy / createdTime).
``exam``
    Each first-level folder is one examination. Keys: ``exam``, ``exam``,
    PatientID (+ issuer, see :func:`patient_key`; the folder name when the
    header has none), the first-level folder. Files directly in the input
    folder fall back to the ``dicom`` rule.
``dicom``
    Unknown layout, the DICOM hierarchy decides: ``dicom``, ``dicom``,
    PatientID (+ issuer), StudyInstanceUID (0020,000D).
``auto``
    Decided per file (:func:`file_rules`), so one input folder may combine
    layouts (the demo cohort does): the cdti rule when the file's folders
    match ``<group>/dicom/<SEQ>/<subject>/<scan>``; else the xnat rule when
    a folder on its path is named ``SCANS`` or ``ASSESSORS``; else the exam
    rule when a folder on its path holds exactly one StudyInstanceUID among
    the remaining files, the shallowest such folder being the examination
    (``scan``; it may sit deeper than the first level, e.g.
    ``ct_exams/EXAM_0001/SER0002/...``); else the dicom rule.
    :func:`detect_layout` / :func:`detect_layout_from_relpaths` name the
    result: one layout, or ``mixed``. (The cdti rule looks at the folders
    above the input folder only when ``layout: cdti`` is explicit.)

Keys never contain ``/`` (replaced by ``_``) and are never empty (``unknown``).
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .dicomio import CLUTTER_SUFFIXES, read_dataset
from .errors import ConfigError, DicomprepError, UnreadableDicom

LAYOUTS = ("auto", "cdti", "exam", "xnat", "dicom")
UNIT_KEYS = ("orig_group", "orig_sequence", "orig_subject", "orig_scan")
_XNAT_MARKERS = {"scans", "assessors"}
_ARCHIVE = re.compile(r"^arc\d+$", re.IGNORECASE)


def _clean(value, fallback: str = "unknown") -> str:
    text = "" if value is None else str(value).strip()
    if text in ("", "nan", "None", "<NA>"):
        text = fallback
    return text.replace("/", "_").replace("\\", "_").replace("\x00", "") or fallback


def patient_key(patient_id, issuer=None) -> str:
    """PatientID (0010,0020), qualified by IssuerOfPatientID (0010,0021) when
    present (``ID@issuer``): the subject key of the header-driven rules."""
    pid = _clean(patient_id)
    iss = "" if issuer is None else str(issuer).strip()
    if iss in ("", "nan", "None", "<NA>"):
        return pid
    return f"{pid}@{_clean(iss)}"


def _parts(relpath: str) -> tuple[str, ...]:
    text = str(relpath)
    if os.sep != "/":
        text = text.replace(os.sep, "/")
    return tuple(p for p in text.split("/") if p and p != ".")


def _cdti_match(parts: Sequence[str]) -> tuple[str, str, str, str] | None:
    """Find ``<group>/dicom/<SEQ>/<subject>/<scan>`` among folder parts (last part is the file)."""
    folders = parts[:-1]
    for i in range(len(folders) - 4, -1, -1):
        if folders[i + 1].lower() == "dicom":
            return folders[i], folders[i + 2], folders[i + 3], folders[i + 4]
    return None


def _xnat_session(parts: Sequence[str]) -> int | None:
    """Index of the session folder (the folder holding SCANS/ASSESSORS), or None."""
    folders = parts[:-1]
    for i in range(1, len(folders)):
        if folders[i].lower() in _XNAT_MARKERS:
            return i - 1
    return None


def file_rules(relpaths: Sequence[str], study_uids: Sequence | None = None) -> list[tuple[str, int]]:
    """The ``auto`` rule per file: ``(layout, exam_depth)`` (module docstring).

    cdti when the file's folders match ``<group>/dicom/<SEQ>/<subject>/<scan>``;
    xnat when they hold a ``SCANS``/``ASSESSORS`` session; else exam when a
    folder on its path holds exactly one StudyInstanceUID among those files
    (the shallowest such folder is the examination, at ``exam_depth``); else
    dicom. Works on distinct folders, so it is cheap for large trees.
    """
    uids = list(study_uids) if study_uids is not None else [None] * len(relpaths)
    folders = [_folder(r) for r in relpaths]
    structural: dict[str, str | None] = {}
    for f in dict.fromkeys(folders):
        parts = _parts(f) + ("file",)
        if _cdti_match(parts) is not None:
            structural[f] = "cdti"
        elif _xnat_session(parts) is not None:
            structural[f] = "xnat"
        else:
            structural[f] = None
    studies: dict[tuple[str, ...], set] = {}
    for f, u in dict.fromkeys((f, u) for f, u in zip(folders, uids) if structural[f] is None):
        parts = _parts(f)
        for depth in range(1, len(parts) + 1):
            studies.setdefault(parts[:depth], set()).add(u)
    exam_depth: dict[str, int] = {}
    for f in structural:
        if structural[f] is not None:
            continue
        parts = _parts(f)
        exam_depth[f] = 0
        for depth in range(1, len(parts) + 1):
            s = studies.get(parts[:depth], set())
            if len(s) == 1 and None not in s:
                exam_depth[f] = depth
                break
    out = []
    for f in folders:
        rule = structural[f]
        if rule is not None:
            out.append((rule, 0))
        elif exam_depth[f]:
            out.append(("exam", exam_depth[f]))
        else:
            out.append(("dicom", 0))
    return out


def detect_layout_from_relpaths(relpaths: Sequence[str], study_uids: Sequence | None = None) -> str:
    """The layout ``auto`` finds: cdti, xnat, exam or dicom when every file
    follows that rule, ``mixed`` when the tree combines them (each file then
    gets its own rule, :func:`file_rules`)."""
    kinds = {rule for rule, _d in file_rules(relpaths, study_uids)}
    if not kinds:
        return "dicom"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def detect_layout(input_dir: str | os.PathLike, headers: Mapping[str, str] | None = None) -> str:
    """Walk ``input_dir`` and apply the ``auto`` rule (cdti, xnat, exam, dicom or
    mixed). ``headers`` optionally maps relpath -> StudyInstanceUID; without
    it, files outside cdti/xnat folders are read with pydicom for it."""
    root = Path(input_dir)
    relpaths = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            relpaths.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    relpaths = sorted(r for r in relpaths if _looks_dicom_name(r))
    if headers is None:
        structural = {r for r, (rule, _d) in zip(relpaths, file_rules(relpaths)) if rule in ("cdti", "xnat")}
        headers = {}
        for rel in relpaths:
            if rel in structural:
                headers[rel] = None
                continue
            try:
                ds = read_dataset(root / rel, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                headers[rel] = str(ds.get("StudyInstanceUID", "") or "") or None
            except UnreadableDicom:
                continue
    rels = [r for r in relpaths if r in headers]
    return detect_layout_from_relpaths(rels, [headers[r] for r in rels])


def _looks_dicom_name(relpath: str) -> bool:
    name = os.path.basename(relpath).lower()
    return os.path.splitext(name)[1] not in CLUTTER_SUFFIXES and name != "dicomdir"


def unit_for(relpath: str, header: Mapping | None, layout: str, input_dir: str | os.PathLike | None = None,
             exam_depth: int = 1) -> tuple[str, str, str, str]:
    """Original unit keys ``(group, sequence, subject, scan)`` of one file.
    ``exam_depth``: folder level of the examination folder (exam layout).

    ``header`` holds at least PatientID, IssuerOfPatientID, StudyInstanceUID
    (missing values are fine). ``input_dir`` lets the cdti rule see the
    folders above the input folder.
    """
    header = header or {}
    parts = _parts(relpath)
    subject_from_header = patient_key(header.get("PatientID"), header.get("IssuerOfPatientID"))
    if layout == "cdti":
        m = _cdti_match(parts)
        if m is None and input_dir is not None:
            above = Path(os.path.abspath(input_dir)).parts
            m = _cdti_match(tuple(above) + tuple(parts))
        if m is not None:
            return tuple(_clean(x) for x in m)  # type: ignore[return-value]
    elif layout == "xnat":
        i = _xnat_session(parts)
        if i is not None:
            session = parts[i]
            prefix = list(parts[:i])
            project = None
            subject = None
            arc = [k for k, p in enumerate(prefix) if _ARCHIVE.match(p)]
            if arc:
                project = prefix[arc[0] - 1] if arc[0] >= 1 else None
            elif len(prefix) >= 2:
                project, subject = prefix[-2], prefix[-1]
            elif len(prefix) == 1:
                subject = prefix[0]
            if subject is None:
                pid = header.get("PatientID")
                subject = subject_from_header if _clean(pid, "") else session
            return ("xnat", _clean(project, "xnat"), _clean(subject), _clean(session))
    elif layout == "exam":
        if len(parts) >= exam_depth + 1:
            folder = parts[exam_depth - 1]
            pid = header.get("PatientID")
            subject = subject_from_header if _clean(pid, "") else folder
            return ("exam", "exam", _clean(subject), _clean(folder))
    elif layout not in ("dicom", "auto", "mixed"):
        raise ConfigError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}.")
    return ("dicom", "dicom", subject_from_header, _clean(header.get("StudyInstanceUID"), "unknown-study"))


def assign_units(
    relpaths: Sequence[str],
    headers: Sequence[Mapping] | None,
    layout: str,
    input_dir: str | os.PathLike | None = None,
) -> list[tuple[str, str, str, str]]:
    """Unit keys of every file (same order as ``relpaths``). ``layout`` may be
    ``auto``: it is then resolved with :func:`detect_layout_from_relpaths`."""
    headers = list(headers) if headers is not None else [{}] * len(relpaths)
    if layout in ("auto", "mixed"):
        rules = file_rules(relpaths, [h.get("StudyInstanceUID") for h in headers])
    else:
        rules = [(layout, 1)] * len(relpaths)
    memo: dict = {}
    out = []
    for r, h, (rule, depth) in zip(relpaths, headers, rules):
        folder = _folder(r)
        key = (folder, rule, depth, h.get("PatientID"), h.get("IssuerOfPatientID"), h.get("StudyInstanceUID"))
        try:
            keys = memo.get(key)
        except TypeError:      # unhashable header values
            keys, key = None, None
        if keys is None:
            keys = unit_for(f"{folder}/file" if folder else "file", h, rule, input_dir, exam_depth=depth or 1)
            if key is not None:
                memo[key] = keys
        out.append(keys)
    return out


def _folder(relpath: str) -> str:
    text = str(relpath).replace(os.sep, "/") if os.sep != "/" else str(relpath)
    return text.rsplit("/", 1)[0] if "/" in text else ""


def orig_unit(keys: Iterable[str]) -> str:
    return "/".join(keys)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].split(":")[-1]


def read_xnat_catalog(path: str | os.PathLike) -> dict:
    """Fields of an XNAT catalog XML (``*catalog*.xml`` in an assessor or scan
    resource): ``createdBy``, ``createdTime``, ``createdEventId``, ``ID``,
    ``description``, ``format``, ``content`` and ``entries`` (list of
    ``{URI, ID, format, content, createdBy, createdTime}``). Namespaces and
    prefixes are ignored; the ``created*`` fields are taken from the catalog
    root, or from its first entry when the root has none. Missing fields are
    absent; an unparsable file raises :class:`~dicomprep.errors.DicomprepError`.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DicomprepError(f"XNAT catalog {path} cannot be read as XML ({exc}); check the file.") from None

    def attrs(el) -> dict:
        return {_local(k): v for k, v in el.attrib.items()}

    out: dict = {}
    for k, v in attrs(root).items():
        out[k] = v
    entries = []
    for el in root.iter():
        name = _local(el.tag)
        if name == "entry":
            entries.append(attrs(el))
        elif el is not root and name in ("createdBy", "createdTime", "createdEventId", "description") and el.text:
            out.setdefault(name, el.text.strip())
    out["entries"] = entries
    for key in ("createdBy", "createdTime", "createdEventId"):
        if key not in out:
            for e in entries:
                if key in e:
                    out[key] = e[key]
                    break
    return out


def find_xnat_catalogs(folder: str | os.PathLike) -> list[Path]:
    """Catalog XML files (``*catalog*.xml``, any case) under ``folder``."""
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            low = name.lower()
            if "catalog" in low and low.endswith(".xml"):
                out.append(Path(dirpath) / name)
    return sorted(out)
