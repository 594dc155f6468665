"""Pixel exports: sorted N-D arrays, the HDF5 store, NIfTI/NPY/PNG/CSV/DICOM files.

* :func:`dicomprep.export.arrays.series_array` — a series as an array sorted by attributes;
* :mod:`dicomprep.export.hdf5` — ``share/hdf5/<unit>.h5``, ``cohort.h5`` and its index table;
* :func:`dicomprep.export.files.export_series` — one series to a file format.
"""
from __future__ import annotations

__all__ = ["series_array", "write_unit_hdf5", "export_series"]


def __getattr__(name):  # lazy: importing the package stays cheap
    if name == "series_array":
        from .arrays import series_array
        return series_array
    if name == "write_unit_hdf5":
        from .hdf5 import write_unit_hdf5
        return write_unit_hdf5
    if name == "export_series":
        from .files import export_series
        return export_series
    raise AttributeError(name)
