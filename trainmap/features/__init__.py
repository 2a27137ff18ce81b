"""Feature extractors: checkpoints in, feature-table rows out."""

from trainmap.features.extract import ExtractionSummary, extract_checkpoint, extract_runs, resolve_families
from trainmap.features.table import feature_columns, flag_columns, read_table, write_table

__all__ = [
    "ExtractionSummary",
    "extract_checkpoint",
    "extract_runs",
    "feature_columns",
    "flag_columns",
    "read_table",
    "resolve_families",
    "write_table",
]
