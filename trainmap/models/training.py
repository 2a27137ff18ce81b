"""Train a detector on a seed ensemble's feature table and evaluate it honestly.

The steps: label the runs and build run vectors at the horizon. Cross-validate the
whole pipeline (scaler and detector), leaving one run out at a time. Fit it on all
runs, embed the run vectors into the training map, and write the artifact.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainmap.models.artifact import CV_FILE, DetectorArtifact
from trainmap.models.detector import OutlierDetector
from trainmap.models.labels import LabelRule, label_runs, read_labels
from trainmap.models.vectors import MADScaler, make_spec, run_vectors

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Configuration of ``trainmap train``.

    Attributes
    ----------
    horizon : int
        Last step the detector may look at.
    threshold : float
        Modified z-score above which a run is an outlier.
    label_metric : str
        Feature-table column whose final value is the run's outcome.
    labels : str or None
        CSV with ``run,label`` that replaces the label rule.
    features : str or None
        Comma-separated feature families or column prefixes to use, e.g.
        ``"hu,loss"``; None uses every feature column.
    exclude : list of str
        Runs kept out of training (held out for scoring).
    name : str or None
        Registered model name in MLflow; defaults to the output folder name.
    random_state : int
        Seed of the detector and of UMAP.
    n_estimators, max_depth, learning_rate, min_child_weight, colsample_bytree
        Detector parameters; see :class:`~trainmap.models.detector.OutlierDetector`.
    """

    horizon: int | None = None
    threshold: float = 3.5
    label_metric: str = "loss/eval"
    labels: str | None = None
    features: str | None = None
    exclude: list[str] = field(default_factory=list)
    name: str | None = None
    random_state: int = 0
    n_estimators: int = 200
    max_depth: int = 2
    learning_rate: float = 0.05
    min_child_weight: float = 0.01
    colsample_bytree: float = 0.5

    def detector_params(self) -> dict:
        """Return the keyword arguments of :class:`OutlierDetector`."""
        return {
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "min_child_weight": self.min_child_weight,
            "colsample_bytree": self.colsample_bytree,
            "random_state": self.random_state,
        }


@dataclass
class TrainResult:
    """Outputs of :func:`train_detector`."""

    artifact: DetectorArtifact
    labels: pd.DataFrame
    cv_predictions: pd.DataFrame
    cv_metrics: dict
    rule: LabelRule
    registered_version: str | None = None


def resolve_labels(table: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, LabelRule]:
    """Return per-run labels (from the rule or the CSV) and the rule used."""
    rule = LabelRule(metric=config.label_metric, threshold=config.threshold)
    if config.labels:
        labels = read_labels(config.labels)
        unknown = sorted(set(labels["run"]) - set(table["run"]))
        if unknown:
            warnings.warn(f"labels file names run(s) {unknown} that the feature table lacks; ignoring them", stacklevel=2)
        return labels[labels["run"].isin(table["run"])].reset_index(drop=True), rule
    return label_runs(table, rule), rule


def select_features(table: pd.DataFrame, selection: str | None) -> list[str] | None:
    """Return the feature columns matching comma-separated families or prefixes."""
    from trainmap.features.table import feature_columns

    if not selection:
        return None
    prefixes = [item.strip() for item in selection.split(",") if item.strip()]
    # "hu" selects the family hu/*; "hu/L2" selects that column (and hu/L2_*).
    patterns = [prefix if "/" in prefix else prefix + "/" for prefix in prefixes]
    chosen = [column for column in feature_columns(table) if column.startswith(tuple(patterns))]
    if not chosen:
        raise ValueError(
            f"--features {selection!r} matches no feature column; the table has "
            f"families {sorted({c.split('/')[0] for c in feature_columns(table)})}"
        )
    return chosen


def train_detector(table: pd.DataFrame, config: TrainConfig, out_dir: str | Path) -> TrainResult:
    """Label, cross-validate, fit, map and save a detector.

    Raises
    ------
    ValueError
        If no horizon is given, or the training runs hold fewer than two runs of
        either class.
    """
    if config.horizon is None:
        raise ValueError("a horizon is required: pass --horizon STEP")
    labels, rule = resolve_labels(table, config)
    train_labels = _training_labels(labels, config.exclude)
    runs = train_labels["run"].tolist()
    y = train_labels["label"].to_numpy(dtype=int)
    _check_class_counts(y)

    train_table = table[table["run"].isin(runs)]
    spec = make_spec(train_table, config.horizon, select_features(train_table, config.features))
    vectors = run_vectors(train_table, spec, runs)
    raw = vectors.to_numpy(dtype=float)

    cv_predictions, cv_metrics = cross_validate(raw, y, runs, config.detector_params())
    scaler = MADScaler().fit(raw)
    scaled = scaler.transform(raw)
    detector = OutlierDetector(**config.detector_params()).fit(scaled, y)

    from trainmap.map import embed

    coords = embed(scaled, random_state=config.random_state)
    artifact = DetectorArtifact(
        spec=spec,
        scaler=scaler,
        detector=detector,
        runs=runs,
        labels=y,
        reference=scaled,
        coords=coords,
        metadata=_metadata(config, rule, labels, cv_metrics),
    )
    folder = artifact.save(out_dir)
    cv_predictions.to_csv(folder / CV_FILE, index=False)
    return TrainResult(artifact, labels, cv_predictions, cv_metrics, rule)


def cross_validate(X: np.ndarray, y: np.ndarray, runs: list[str], params: dict) -> tuple[pd.DataFrame, dict]:
    """Leave-one-run-out cross-validation of the scaler + detector pipeline.

    Each fold refits the scaler on the training runs only, so the held-out run
    never shapes its own normalisation.

    Returns
    -------
    predictions : pandas.DataFrame
        ``run``, ``label``, ``risk`` (out of fold).
    metrics : dict
        ``auroc``, ``average_precision``, ``brier``, ``n_runs``, ``n_outliers``.
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(MADScaler(), OutlierDetector(**params))
    risk = cross_val_predict(pipeline, X, y, groups=runs, cv=LeaveOneGroupOut(), method="predict_proba")[:, 1]
    metrics = {
        "auroc": float(roc_auc_score(y, risk)),
        "average_precision": float(average_precision_score(y, risk)),
        "brier": float(brier_score_loss(y, risk)),
        "n_runs": int(len(y)),
        "n_outliers": int(y.sum()),
    }
    predictions = pd.DataFrame({"run": runs, "label": y, "risk": risk})
    return predictions, metrics


def _training_labels(labels: pd.DataFrame, exclude: list[str]) -> pd.DataFrame:
    """Drop held-out and unlabelled runs, warning about the latter."""
    unlabelled = labels[labels["label"].isna() & ~labels["run"].isin(exclude)]
    for _, row in unlabelled.iterrows():
        warnings.warn(f"run {row['run']} has no label ({row['reason']}); it is left out of training", stacklevel=3)
    kept = labels[labels["label"].notna() & ~labels["run"].isin(exclude)]
    return kept.sort_values("run").reset_index(drop=True)


def _check_class_counts(y: np.ndarray) -> None:
    """Require two runs of each class: leave-one-run-out needs both in every fold."""
    outliers = int(y.sum())
    stable = int(len(y) - outliers)
    if outliers < 2 or stable < 2:
        raise ValueError(
            f"training needs at least 2 outlier and 2 stable runs, got {outliers} outlier(s) "
            f"and {stable} stable run(s) among {len(y)} labelled runs. Train more seeds, "
            "lower the label --threshold, or pass labels with --labels"
        )


def _metadata(config: TrainConfig, rule: LabelRule, labels: pd.DataFrame, cv_metrics: dict) -> dict:
    """Return the artifact's descriptive metadata."""
    return {
        "label_rule": rule.to_dict() if not config.labels else {"rule": "csv", "path": str(config.labels)},
        "labels": labels.assign(label=labels["label"].astype(float)).to_dict(orient="records"),
        "cv": {"scheme": "leave-one-run-out", **cv_metrics},
        "train_config": asdict(config),
        "versions": package_versions(),
    }


def package_versions() -> dict:
    """Return versions of the packages whose behaviour shapes results."""
    import mlflow
    import sklearn
    import torch
    import umap
    import xgboost

    from trainmap import __version__

    return {
        "trainmap": __version__,
        "torch": torch.__version__,
        "xgboost": xgboost.__version__,
        "umap-learn": umap.__version__,
        "scikit-learn": sklearn.__version__,
        "mlflow": mlflow.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }
