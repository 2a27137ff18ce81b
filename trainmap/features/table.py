"""The feature table: one row per (run, step), feature columns and ``flag/*`` columns.

Feature columns are named ``family/name``; flag columns ``flag/name``. trainmap
writes tables as Parquet, to a temporary file that is then renamed into place, so a
killed process leaves either the old table or the new one. It also reads CSV and TSV
tables made by other tools.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

KEY_COLUMNS = ("run", "step")
FLAG_PREFIX = "flag/"


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Return the numeric columns that are neither keys nor flags, in table order.

    trainmap names its features ``family/name``; tables made by other tools may
    use any column name, and every numeric column of theirs counts as a feature.
    """
    columns = []
    for column in table.columns:
        if column in KEY_COLUMNS or str(column).startswith(FLAG_PREFIX):
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


def read_table(path: str | Path, run_column: str = "run", step_column: str = "step") -> pd.DataFrame:
    """Read a feature table from Parquet, CSV or TSV and check its key columns.

    The format follows the suffix: ``.parquet``/``.pq``, ``.csv``, or
    ``.tsv``/``.tab``/``.txt`` (tab-separated). Tables made by other tools may name
    their key columns differently; ``run_column`` and ``step_column`` say which,
    and they are renamed to ``run`` and ``step``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the suffix is unknown, a key column is missing, or steps are not integers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"feature table {path} does not exist; make one with "
            "`trainmap extract RUNS_DIR -o FEATURES.parquet`"
        )
    table = _read_any(path)
    missing = [column for column in (run_column, step_column) if column not in table.columns]
    if missing:
        raise ValueError(
            f"feature table {path} has no column {' or '.join(repr(c) for c in missing)}; its "
            f"columns are {list(table.columns)[:12]}. Name the run and step columns with "
            "--run-column and --step-column"
        )
    table = table.rename(columns={run_column: "run", step_column: "step"})
    steps = pd.to_numeric(table["step"], errors="coerce")
    if steps.isna().any() or (steps != steps.round()).any():
        bad = table.loc[steps.isna() | (steps != steps.round()), "step"].head(3).tolist()
        raise ValueError(f"feature table {path} has non-integer steps {bad} in column {step_column!r}")
    table["run"] = table["run"].astype(str)
    table["step"] = steps.astype("int64")
    return table.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


def _read_any(path: Path) -> pd.DataFrame:
    """Read ``path`` by its suffix."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".tsv", ".tab", ".txt"):
        return pd.read_csv(path, sep="\t")
    raise ValueError(
        f"feature table {path} has suffix {suffix!r}; use .parquet, .csv or .tsv"
    )
