"""Leak verification of share/: identifiers, matcher, one scanner per output format, OCR of pixels."""
