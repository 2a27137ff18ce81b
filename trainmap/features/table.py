"""The feature table: one row per (run, step), feature columns and ``flag/*`` columns.

Feature columns are named ``family/name``; flag columns ``flag/name``. Tables are
stored as Parquet, written to a temporary file and renamed into place, so a killed
process leaves either the old table or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

KEY_COLUMNS = ("run", "step")
FLAG_PREFIX = "flag/"


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Return the numeric ``family/name`` columns that are not flags, in table order."""
    columns = []
    for column in table.columns:
        if column in KEY_COLUMNS or column.startswith(FLAG_PREFIX) or "/" not in column:
            continue
        if pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(table[column]):
            columns.append(column)
    return columns


def flag_columns(table: pd.DataFrame) -> list[str]:
    """Return the ``flag/*`` columns."""
    return [column for column in table.columns if column.startswith(FLAG_PREFIX)]


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` to Parquet atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    table.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a feature table and check its key columns.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the ``run`` or ``step`` column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"feature table {path} does not exist; make one with "
            "`trainmap extract RUNS_DIR -o FEATURES.parquet`"
        )
    table = pd.read_parquet(path)
    missing = [column for column in KEY_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"feature table {path} has no {' or '.join(missing)} column; a feature "
            "table needs 'run' and 'step' columns"
        )
    table["run"] = table["run"].astype(str)
    table["step"] = table["step"].astype("int64")
    return table.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
