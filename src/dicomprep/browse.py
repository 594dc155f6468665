"""A DICOM folder as a database: patients / studies / series / instances.

``dicomprep.open_index(OUT)`` opens the private index an output folder holds
(``dicomprep index INPUT OUT`` or the workflow writes it) and answers queries:

>>> idx = dicomprep.open_index("results")
>>> idx.series(Modality="CT")                     # DataFrame of CT series
>>> idx.instances(SeriesNumber=3)
>>> arr, headers, dims = idx.array(series_key, sortby=["SliceLocation"])

Keyword conditions take the forms of the config's ``select:`` conditions
(value, list, ``{"regex": ...}``, ``{"min": .., "max": ..}``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .errors import DicomprepError
from .select import condition_mask, read_index

PATIENT_COLUMNS = ["PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"]
STUDY_COLUMNS = ["StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID"]
LEVELS = ("patients", "studies", "series", "instances")


def parse_where(items: list[str] | None) -> dict[str, Any]:
    """``["Modality=CT", "SeriesNumber=3"]`` → ``{"Modality": "CT", ...}``; ``~`` means regex."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "~" in item and ("=" not in item or item.index("~") < item.index("=")):
            key, value = item.split("~", 1)
            out[key.strip()] = {"regex": value}
        elif "=" in item:
            key, value = item.split("=", 1)
            out[key.strip()] = value
        else:
            raise DicomprepError(f"--where {item!r}: write KEY=VALUE (equality) or KEY~REGEX.")
    return out


class CohortIndex:
    """Query the index of a dicomprep output folder."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self._instances, self._series = read_index(self.output_dir)

    @staticmethod
    def _filter(table: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
        mask = pd.Series(True, index=table.index)
        for key, cond in where.items():
            mask &= condition_mask(table, key, cond, where="query")
        return table.loc[mask].reset_index(drop=True)

    def instances(self, **where: Any) -> pd.DataFrame:
        """One row per instance (file/frame set)."""
        return self._filter(self._instances, where)

    def series(self, **where: Any) -> pd.DataFrame:
        """One row per series, with ``kind`` and geometry summary."""
        return self._filter(self._series, where)

    def studies(self, **where: Any) -> pd.DataFrame:
        """One row per study, with counts of series and instances."""
        inst = self._filter(self._instances, where)
        cols = [c for c in PATIENT_COLUMNS[:2] + STUDY_COLUMNS if c in inst]
        g = inst.groupby("StudyInstanceUID", dropna=False)
        out = g[cols].first().drop(columns=["StudyInstanceUID"], errors="ignore").reset_index()
        out["n_series"] = g["series_key"].nunique().values
        out["n_instances"] = g.size().values
        return out

    def patients(self, **where: Any) -> pd.DataFrame:
        """One row per patient (PatientID + issuer), with counts."""
        inst = self._filter(self._instances, where)
        keys = [c for c in ("PatientID", "IssuerOfPatientID") if c in inst]
        g = inst.groupby(keys, dropna=False)
        cols = [c for c in PATIENT_COLUMNS if c in inst and c not in keys]
        out = g[cols].first().reset_index()
        out["n_studies"] = g["StudyInstanceUID"].nunique().values
        out["n_series"] = g["series_key"].nunique().values
        out["n_instances"] = g.size().values
        return out

    def table(self, level: str, **where: Any) -> pd.DataFrame:
        if level not in LEVELS:
            raise DicomprepError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}.")
        return getattr(self, level)(**where)

    def series_paths(self, series: str) -> list[Path]:
        """Files of a series given its ``series_key``, SeriesInstanceUID or ``unit:series_id``."""
        inst = self._instances
        sel = inst[(inst["series_key"] == series) | (inst["SeriesInstanceUID"] == series)]
        if sel.empty:
            raise DicomprepError(
                f"no series {series!r} in the index of {self.output_dir}; list them with "
                f"`dicomprep ls {self.output_dir} series`.")
        if sel["series_key"].nunique() > 1:
            raise DicomprepError(
                f"{series!r} names {sel['series_key'].nunique()} series (one SeriesInstanceUID, several "
                "SeriesNumbers); give the series_key instead.")
        return [Path(p) for p in sel["path"]]

    def array(self, series: str, sortby: list[str] | None = None):
        """N-D pixel array of a series sorted by attributes, with the header grid.

        See :func:`dicomprep.export.arrays.series_array`.
        """
        from .export.arrays import series_array

        return series_array(self.series_paths(series), sortby=sortby)
