"""dicomprep: clinical DICOM exports to shareable research cohorts.

The package holds all logic of the workflow; the Snakemake rules and scripts
only call it. It never imports snakemake.
"""
from __future__ import annotations

from .version import __version__


def open_index(output_dir):
    """Open the index of a dicomprep output folder for browsing and queries.

    ``dicomprep.open_index(OUT).series(Modality="CT")`` returns a DataFrame.
    """
    from .browse import CohortIndex  # lazy: `import dicomprep` stays light (browse pulls pandas, pydicom)

    return CohortIndex(output_dir)


__all__ = ["open_index", "__version__"]
