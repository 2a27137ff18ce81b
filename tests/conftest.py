"""Shared fixtures: a micro seed ensemble trained for real, once per test session.

The micro ensemble has 8 runs of a 1-layer, width-16 GPT-NeoX trained for 24
steps. Every fourth run uses a learning rate 1000 times larger, which reliably
ends it with a much worse eval loss, so the label rule finds two outliers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def micro_config(**overrides):
    from trainmap.ensemble import EnsembleConfig

    values = dict(
        seeds=8,
        steps=24,
        width=16,
        layers=1,
        heads=2,
        seq_len=16,
        batch_size=4,
        warmup=2,
        learning_rates=[0.003, 0.003, 0.003, 3.0],
        n_evenly_spaced=4,
        eval_batches=2,
        threads=1,
    )
    values.update(overrides)
    return EnsembleConfig(**values)


@pytest.fixture(scope="session")
def micro_runs(tmp_path_factory) -> Path:
    """Folder with the 8 micro runs (seed0..seed7); treat it as read-only."""
    from trainmap.ensemble import train_ensemble

    out = tmp_path_factory.mktemp("micro") / "runs"
    train_ensemble(micro_config(), out)
    return out


@pytest.fixture(scope="session")
def micro_table(micro_runs, tmp_path_factory):
    """Feature table of the micro ensemble, extracted once; returns (table, path)."""
    from trainmap.checkpoints import find_runs
    from trainmap.features import extract_runs, write_table

    table, _ = extract_runs(find_runs(micro_runs), progress=False)
    path = write_table(table, tmp_path_factory.mktemp("table") / "features.parquet")
    return table, path


@pytest.fixture(autouse=True)
def _no_store_in_working_folder(request, tmp_path, monkeypatch):
    """Keep MLflow logging out of the folder pytest runs in, unless a test requests a store."""
    if "mlflow_store" not in request.fixturenames:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """Point MLflow at a fresh SQLite store in tmp_path; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
