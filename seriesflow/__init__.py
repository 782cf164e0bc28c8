"""seriesflow: DICOM ingestion into an exact PostgreSQL catalog (CLI and shared plumbing)."""

__version__ = "0.1.0"
