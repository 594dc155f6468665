"""Masks → DICOM Segmentation (SEG) objects that reference their source series.

The reverse of :mod:`dicomprep.convert.seg`: per-segment NIfTI masks (the ones
``convert_seg`` decodes into ``share/masks/<unit>/``, or masks a model
produced) become one BINARY Segmentation (PS3.3 A.51, written with highdicom)
that references the (de-identified) source series it was drawn on:

* Referenced Series Sequence (0008,1115) / Referenced Instance Sequence and,
  per frame, Derivation Image Sequence > Source Image Sequence (0008,2112)
  with the source SOP Instance UIDs;
* FrameOfReferenceUID (0020,0052), patient and study attributes copied from
  the source (so a de-identified source gives a de-identified SEG);
* Segment Sequence (0062,0002) with SegmentLabel, coded category/type,
  colour, SegmentAlgorithmType and Segmentation Algorithm Identification
  Sequence (0062,0007) naming the algorithm and its version.

Masks must lie on the source grid (the grid :func:`dicomprep.convert.seg.source_grid`
builds: slices sorted by position, RAS affine); a mask on another grid is
resampled onto it by nearest neighbour, in world coordinates.

Determinism: the SEG's SeriesInstanceUID and SOPInstanceUID are keyed
pseudonyms (:func:`dicomprep.deid.pseudonym.uid_pseudonym`) of the source
series UID and the segmentation's name; dates and times are the source
series' (already shifted by de-identification), never the clock. The same
masks, source and secret give a byte-identical file.

Public API: :func:`write_seg`, :func:`write_seg_from_manifest`, :func:`seg_for_unit`.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import highdicom as hd
import nibabel as nib
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from ..convert.seg import source_grid
from ..dicomio import read_dataset, write_dataset
from ..deid.pseudonym import uid_pseudonym
from ..errors import DicomprepError
from ..geometry import same_grid
from ..version import __version__
from .resample import resample

#: Default coded concept of a segment with no codes of its own:
#: SCT 85756007 "Tissue" (CID 7150 category and CID 7151 type).
DEFAULT_CODE = {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"}
#: Colours given to segments without one (sRGB), cycling.
PALETTE = [(128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
           (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0)]


class SegWriteError(DicomprepError):
    """A SEG cannot be written; the message says which mask or source and why."""


@dataclass
class MaskSpec:
    """One segment to write: a label, the mask (array + RAS affine) and optional codes."""

    label: str
    data: np.ndarray                       # [i, j, k] on ``affine``; nonzero = inside
    affine: np.ndarray                     # RAS
    category: dict = field(default_factory=dict)   # {value, scheme, meaning}
    type: dict = field(default_factory=dict)
    rgb: Sequence[int] | None = None
    description: str = ""
    source: str = ""                       # file it came from, for messages


@dataclass
class SegWritten:
    """What :func:`write_seg` wrote."""

    path: Path
    series_uid: str
    sop_uid: str
    source_series_uid: str
    frame_of_reference_uid: str
    segments: list                         # [{number, label, n_voxels, resampled}]
    notes: list = field(default_factory=list)


def load_mask(path: str | Path, label: str | None = None, **codes: Any) -> MaskSpec:
    """A NIfTI mask file as a :class:`MaskSpec` (label: the file name unless given)."""
    path = Path(path)
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SegWriteError(f"{path.name}: a mask must be a 3-D volume, this one has shape {data.shape}.")
    name = label or path.name.split(".")[0]
    return MaskSpec(label=name, data=data, affine=np.asarray(img.affine, float), source=str(path), **codes)


def _coded(code: Mapping | None):
    c = dict(code or {}) or DEFAULT_CODE
    if not c.get("value") or not c.get("scheme"):
        c = DEFAULT_CODE
    return CodedConcept(value=str(c["value"]), scheme_designator=str(c["scheme"]),
                        meaning=str(c.get("meaning") or c["value"]))


def _source_datasets(grid) -> tuple[list, list[int]]:
    """Source datasets in the order highdicom expects, and for each grid slice
    the index of its frame in that order.

    Single-frame sources: one dataset per slice, in grid (position) order. One
    multi-frame source: that dataset; its frames in frame-number order.
    """
    sops = [k[0] for k in grid.keys]
    if len(set(sops)) == 1 and len(sops) > 1:
        ds = _tidy(read_dataset(grid.paths[0], stop_before_pixels=True))
        return [ds], [int(k[1]) - 1 for k in grid.keys]
    if len(set(sops)) != len(sops):
        raise SegWriteError("the source series mixes multi-frame and single-frame instances; "
                            "write the SEG against a series of single-frame images or one multi-frame image.")
    return [_tidy(read_dataset(p, stop_before_pixels=True)) for p in grid.paths], list(range(len(grid.paths)))


def _tidy(ds):
    """In-memory fixes highdicom needs (the source file is not touched): an empty
    SpecificCharacterSet (0008,0005) means the default repertoire, so drop it."""
    if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
        del ds.SpecificCharacterSet
    return ds


def _keyed(secret: bytes, *parts: str) -> str:
    return uid_pseudonym(secret, "dicomprep-derived|" + "|".join(parts))


def write_seg(masks: Sequence[MaskSpec | str | Path], source_paths: Iterable[str | Path], out_path: str | Path,
              *, secret: bytes, name: str = "", series_description: str | None = None,
              series_number: int = 9000, algorithm_name: str = "dicomprep", algorithm_version: str = __version__,
              algorithm_family: str = "ArtificialIntelligence", algorithm_type: str = "AUTOMATIC",
              content_label: str = "SEGMENTATION") -> SegWritten:
    """Write one BINARY DICOM-SEG at ``out_path`` holding ``masks`` on the series ``source_paths``.

    ``masks``: :class:`MaskSpec` items or NIfTI paths (label = file name).
    ``source_paths``: the files of the (de-identified) source series; the SEG
    copies their patient/study attributes and references their instances.
    ``name`` keys the SEG's UIDs (with the source SeriesInstanceUID and the
    ``secret``), so re-running gives the same UIDs and a second SEG on the same
    source needs another name. ``algorithm_family``: a CID 7162 keyword of
    ``pydicom.sr.codedict.codes.cid7162`` (e.g. ``ArtificialIntelligence``,
    ``ManualProcessing``). Raises :class:`SegWriteError` with the reason.
    """
    specs = [m if isinstance(m, MaskSpec) else load_mask(m) for m in masks]
    if not specs:
        raise SegWriteError(f"{out_path}: no mask given; a SEG needs at least one segment.")
    grid = source_grid(list(source_paths))
    datasets, frame_index = _source_datasets(grid)
    first = datasets[0]
    for attr in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID"):
        if not str(getattr(first, attr, "") or ""):
            raise SegWriteError(f"the source series has no {attr}; a SEG must reference it.")
    shape = grid.shape                                 # (columns, rows, slices)
    n_frames = len(frame_index)
    pixels = np.zeros((n_frames, shape[1], shape[0], len(specs)), dtype=np.uint8)
    family = getattr(codes.cid7162, algorithm_family, None)
    if family is None:
        raise SegWriteError(f"algorithm_family {algorithm_family!r} is not a CID 7162 keyword "
                            "(e.g. ArtificialIntelligence, ManualProcessing).")
    algo = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=family, version=str(algorithm_version))
    descriptions, summary, notes = [], [], []
    for n, spec in enumerate(specs, start=1):
        data = np.asarray(spec.data)
        resampled = False
        if not same_grid(spec.affine, data.shape, grid.affine, shape):
            data = resample((data > 0).astype(np.uint8), spec.affine, grid.affine, shape, order=0)
            resampled = True
            notes.append(f"segment '{spec.label}' ({Path(spec.source).name or 'array'}) was not on the source grid "
                         "and was resampled onto it by nearest neighbour")
        on = (data > 0)
        # [col, row, slice] -> frames [slice, row, col] in the source's frame order
        for k in range(shape[2]):
            pixels[frame_index[k], :, :, n - 1] = on[:, :, k].T
        rgb = spec.rgb or PALETTE[(n - 1) % len(PALETTE)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=str(spec.label)[:64],
            segmented_property_category=_coded(spec.category), segmented_property_type=_coded(spec.type),
            algorithm_type=algorithm_type,
            algorithm_identification=algo if algorithm_type != "MANUAL" else None,
            display_color=hd.color.CIELabColor.from_rgb(*[int(c) for c in rgb])))
        summary.append({"number": n, "label": spec.label, "n_voxels": int(on.sum()), "resampled": resampled})
    source_uid = str(first.SeriesInstanceUID)
    series_uid = _keyed(secret, "seg-series", source_uid, name)
    sop_uid = _keyed(secret, "seg-instance", series_uid)
    date = str(getattr(first, "SeriesDate", "") or getattr(first, "StudyDate", "") or "")
    time = str(getattr(first, "SeriesTime", "") or getattr(first, "StudyTime", "") or "")
    kwargs = {}
    if date:
        kwargs["content_date"] = date
        kwargs["content_time"] = time or "000000"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # person-name style of the source
            seg = hd.seg.Segmentation(
                source_images=datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=series_uid, series_number=int(series_number),
                sop_instance_uid=sop_uid, instance_number=1, manufacturer="dicomprep",
                manufacturer_model_name="dicomprep", software_versions=f"dicomprep {__version__}",
                device_serial_number="0", content_label=content_label, content_description=(name[:64] or None),
                omit_empty_frames=True, **kwargs)
    except Exception as exc:
        raise SegWriteError(f"highdicom cannot build the SEG for source series {source_uid} "
                            f"({type(exc).__name__}: {exc}).") from None
    _make_deterministic(seg, secret, series_uid, date, time)
    seg.SeriesDescription = (series_description if series_description is not None
                             else (name or "Segmentation"))[:64]
    out_path = Path(out_path)
    write_dataset(seg, out_path)
    return SegWritten(out_path, series_uid, sop_uid, source_uid, str(first.FrameOfReferenceUID), summary, notes)


def _make_deterministic(ds, secret: bytes, series_uid: str, date: str, time: str) -> None:
    """Replace what highdicom takes from the clock or a random UID with values
    derived from the source and the secret."""
    if date:
        ds.InstanceCreationDate = date
        ds.InstanceCreationTime = time or "000000"
        ds.SeriesDate = date
        ds.SeriesTime = time or "000000"
    else:
        for kw in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
            if kw in ds:
                delattr(ds, kw)
    for item in getattr(ds, "ContributingEquipmentSequence", None) or []:
        if "ContributionDateTime" in item:
            if date:
                item.ContributionDateTime = date + (time or "000000")
            else:
                del item.ContributionDateTime
    for item in getattr(ds, "DimensionOrganizationSequence", None) or []:
        item.DimensionOrganizationUID = _keyed(secret, "dimension-organization", series_uid)
    for item in getattr(ds, "DimensionIndexSequence", None) or []:
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = _keyed(secret, "dimension-organization", series_uid)


def write_seg_from_manifest(manifest_json: str | Path, source_paths: Iterable[str | Path], out_path: str | Path,
                            *, secret: bytes, **kwargs: Any) -> SegWritten:
    """Write the SEG of one decoded mask set: the ``<series>_seg_<assessor>.json`` that
    :func:`dicomprep.convert.seg_output.write_masks` writes beside its NIfTI masks names
    each segment's file, label, codes and colour. Merged masks (unions) are left
    out: they repeat voxels of the segments they are made of."""
    manifest_json = Path(manifest_json)
    meta = json.loads(manifest_json.read_text())
    specs = []
    for s in meta.get("segments", []):
        if s.get("merged_from"):
            continue
        specs.append(load_mask(manifest_json.parent / s["file"], label=s.get("label"),
                               category=s.get("category") or {}, type=s.get("type") or {}, rgb=s.get("rgb")))
    name = kwargs.pop("name", None) or str(meta.get("name") or manifest_json.name.split(".")[0])
    return write_seg(specs, source_paths, out_path, secret=secret, name=name, **kwargs)


def seg_for_unit(masks_dir: str | Path, dicom_dir: str | Path, out_dir: str | Path, *, secret: bytes,
                 config: dict | None = None) -> list[SegWritten]:
    """Every mask set of one unit as a SEG next to its de-identified source series.

    ``masks_dir``: ``share/masks/<unit>/`` (the ``*_seg_*.json`` manifests of
    ``convert_seg`` and their NIfTI masks). ``dicom_dir``:
    ``share/dicom/<unit>/`` (one folder per de-identified series). For each
    manifest, the source is the series folder named by its
    ``source_series_id``; the SEG is written to
    ``<out_dir>/<source_series_id>_seg-<assessor>/0001.dcm``. Returns what was
    written; a manifest whose source series folder is missing raises
    :class:`SegWriteError` naming it.
    """
    cfg = dict(((config or {}).get("export", {}) or {}).get("dicom", {}) or {})
    if not cfg.get("seg", True):
        return []
    masks_dir, dicom_dir, out_dir = Path(masks_dir), Path(dicom_dir), Path(out_dir)
    written = []
    for manifest in sorted(masks_dir.glob("*_seg_*.json")):
        meta = json.loads(manifest.read_text())
        src_id = str(meta.get("source_series_id") or manifest.name.split("_seg_")[0])
        src_dir = dicom_dir / src_id
        files = sorted(p for p in src_dir.glob("*") if p.is_file()) if src_dir.is_dir() else []
        if not files:
            raise SegWriteError(f"{manifest.name}: its source series folder {src_dir} is missing or empty; "
                                "run de-identification for this unit first.")
        stem = manifest.name[: -len(".json")].replace("_seg_", "_seg-")
        written.append(write_seg_from_manifest(
            manifest, files, out_dir / stem / "0001.dcm", secret=secret,
            algorithm_name=str(cfg.get("algorithm_name", "dicomprep")),
            algorithm_type=str(cfg.get("algorithm_type", "AUTOMATIC"))))
    return written
