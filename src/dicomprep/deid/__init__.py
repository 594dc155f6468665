"""De-identification: PS3.15 Annex E profile, keyed pseudonyms, leak verification."""
