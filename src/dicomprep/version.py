"""The package version (``dicomprep.__version__``), in a module of its own so that
modules writing it into outputs (SoftwareVersions (0018,1020), reports, BIDS
sidecars) import this leaf and not the package ``__init__``."""

__version__ = "0.1.0"
