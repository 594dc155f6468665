"""Quality control: per-series checks, pictures, the cohort report, status."""
