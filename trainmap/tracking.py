"""Every MLflow call of trainmap lives here.

The store is ``MLFLOW_TRACKING_URI`` when set. Otherwise it is an SQLite database
``mlflow.db`` in the working folder, addressed by an absolute ``sqlite:///`` URI,
because MLflow 3 no longer accepts plain file stores. Runs are context
managers: an exception inside one ends the MLflow run as FAILED and propagates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

EXPERIMENT = "trainmap"
DATABASE = "mlflow.db"
_MAX_PARAM_LENGTH = 6000  # MLflow rejects longer parameter values


def tracking_uri(workdir: str | Path | None = None) -> str:
    """Return the tracking URI: ``MLFLOW_TRACKING_URI`` or ``sqlite:///<workdir>/mlflow.db``."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    folder = Path(workdir or os.getcwd()).resolve()
    return f"sqlite:///{folder / DATABASE}"


def ui_command(uri: str) -> str:
    """Return the shell command that opens the MLflow UI on ``uri``."""
    return f"mlflow ui --backend-store-uri {uri}"


@contextlib.contextmanager
def tracked_run(
    run_name: str,
    workdir: str | Path | None = None,
    experiment: str = EXPERIMENT,
    tags: dict[str, str] | None = None,
) -> Iterator["mlflow.ActiveRun"]:
    """Start an MLflow run on the trainmap store; it ends FAILED on an exception."""
    import mlflow

    _quiet_mlflow()
    uri = tracking_uri(workdir)
    mlflow.set_tracking_uri(uri)
    _ensure_experiment(experiment, uri)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield run


def _ensure_experiment(name: str, uri: str) -> None:
    """Select experiment ``name``, creating it with artifacts beside an SQLite store.

    MLflow would otherwise put the artifacts of an SQLite store in ``./mlruns`` of
    whatever folder the command runs from. For other stores (a tracking server),
    the server chooses.
    """
    import mlflow

    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        location = None
        if uri.startswith("sqlite:///"):
            database = Path(uri[len("sqlite:///"):])
            location = (database.resolve().parent / "mlartifacts").as_uri()
        client.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)


def log_config(config, prefix: str = "") -> None:
    """Log a dataclass or dict as run parameters, flattened with dotted keys."""
    import mlflow

    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    flat = {}
    for key, value in _flatten(values, prefix):
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        flat[key] = text[:_MAX_PARAM_LENGTH]
    mlflow.log_params(flat)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite metrics; non-finite values are skipped with a log message."""
    import mlflow

    finite = {}
    for key, value in metrics.items():
        if value is None or not math.isfinite(float(value)):
            logger.info("not logging metric %s: value %r is not finite", key, value)
            continue
        finite[_metric_key(key)] = float(value)
    mlflow.log_metrics(finite, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Upload one file or folder to the active run."""
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_table_preview(table, name: str) -> None:
    """Log a DataFrame as a JSON table artifact, viewable in the MLflow UI."""
    import mlflow

    mlflow.log_table(data=table, artifact_file=name)


def log_integrity(table, summary_lines: list[str], gaps: dict[str, list[int]]) -> None:
    """Log a feature table's ``flag/*`` columns and the extraction summary.

    ``integrity.json`` is an MLflow table with run, step and every flag, one row
    per checkpoint. ``extraction_summary.json`` has the summary lines, the
    schedule gaps per run and the rows with a defect flag.
    """
    import mlflow

    flags = [column for column in table.columns if column.startswith("flag/")]
    frame = table[["run", "step", *flags]]
    mlflow.log_table(data=frame, artifact_file="integrity.json")
    mlflow.log_dict({"summary": summary_lines, "gaps": gaps,
                     "flagged": frame[_defect_rows(frame)].to_dict(orient="records")}, "extraction_summary.json")


def _defect_rows(frame):
    """Return a boolean Series, True for rows with a defect flag (notes such as ``flag/tied`` do not count)."""
    from trainmap.checkpoints import READER_FLAGS, RUN_FLAGS
    from trainmap.features.extract import COUNTED_FLAGS

    defaults = {**READER_FLAGS, **RUN_FLAGS}
    mask = frame["flag/incomplete"].astype(bool) | frame["flag/unreadable"].astype(bool)
    mask |= frame["flag/nonfinite"] > 0
    for column in COUNTED_FLAGS:
        if column in frame:
            mask |= frame[column] != defaults[column]
    return mask


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active run."""
    import mlflow

    mlflow.set_tags(tags)


def log_detector_model(booster, detector_folder: str | Path, registered_name: str | None) -> str | None:
    """Log the detector as an MLflow model and register it under ``registered_name``.

    A tree detector is logged as an MLflow XGBoost model, with the booster saved in
    UBJSON (no pickle) and the detector's JSON files as extra files, so a registered
    version contains everything ``trainmap score`` needs. A shrunken-centroid
    detector has no booster: its version points at the ``detector`` artifact
    folder of the active run, which must already be logged.

    Returns
    -------
    str or None
        The registered model version, or None when ``registered_name`` is None.
    """
    import mlflow
    import sklearn
    import xgboost

    if booster is None:
        if registered_name is None:
            return None
        run = mlflow.active_run()
        client = mlflow.MlflowClient()
        try:
            client.get_registered_model(registered_name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(registered_name)
        version = client.create_model_version(
            registered_name, source=f"{run.info.artifact_uri}/detector", run_id=run.info.run_id
        )
        return str(version.version)
    folder = Path(detector_folder)
    extra = [str(path) for path in sorted(folder.glob("*.json"))]
    info = mlflow.xgboost.log_model(
        xgb_model=booster,
        name="detector",
        model_format="ubj",
        registered_model_name=registered_name,
        pip_requirements=[f"xgboost=={xgboost.__version__}", f"scikit-learn=={sklearn.__version__}"],
        extra_files=extra,
    )
    version = getattr(info, "registered_model_version", None)
    return None if version is None else str(version)


def _flatten(values: dict, prefix: str) -> Iterator[tuple[str, object]]:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _metric_key(key: str) -> str:
    """Return ``key`` with characters MLflow rejects in metric names replaced."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)


def _quiet_mlflow() -> None:
    """Silence MLflow's and alembic's per-run INFO lines and artifact progress bars."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_dict(data: dict, artifact_file: str) -> None:
    """Store ``data`` as a JSON (or YAML, by suffix) artifact of the active run."""
    import mlflow

    mlflow.log_dict(data, artifact_file)


def log_child_curves(run_name: str, series: dict[str, dict[int, float]]) -> None:
    """Log per-step curves of one training run as a child of the active run.

    ``series`` maps a metric name to ``{step: value}``, as
    :func:`trainmap.features.losses.read_metrics` returns. Non-finite values are
    kept: MLflow stores NaN, and a diverged run should show it.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    with mlflow.start_run(run_name=run_name, nested=True) as child:
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(_metric_key(name), float(value), timestamp, int(step))
            for name, values in series.items()
            for step, value in sorted(values.items())
        ]
        client = mlflow.MlflowClient()
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(child.info.run_id, metrics=metrics[start : start + 1000])


@contextlib.contextmanager
def child_run(run_name: str) -> Iterator["mlflow.ActiveRun"]:
    """Start a run nested in the active one; it ends FAILED on an exception."""
    import mlflow

    with mlflow.start_run(run_name=run_name, nested=True) as run:
        yield run
