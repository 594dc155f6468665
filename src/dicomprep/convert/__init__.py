"""Converters: DICOM series to analysis formats (dcm2niix, STEAM, CT volumes, SEG masks)."""
