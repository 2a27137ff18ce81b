"""Train a detector on a seed ensemble's feature table and evaluate it honestly.

The steps: label the runs, resolve the horizons, and cross-validate the whole
pipeline (scaler and detector) on splits by run at every horizon. Then fit one
detector per horizon on all training runs, embed their run vectors into the
training map, and write the artifact.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainmap.models.artifact import CV_FILE, DetectorArtifact, HorizonModel
from trainmap.models.detector import OutlierDetector
from trainmap.models.labels import LabelRule, label_runs, read_labels
from trainmap.models.vectors import MADScaler, make_spec, resolve_horizons, run_vectors

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Configuration of ``trainmap train`` (and of the labels and splits of ``evaluate``).

    Attributes
    ----------
    horizon : list of str
        Horizons as steps (``"60"``) or percentages of training (``"5%"``); one
        detector is trained per horizon.
    threshold : float or None
        Modified z-score above which a run is an outlier; None disables the rule.
    label_metric : str
        Column whose final value is the run's outcome.
    divergence : bool
        Label runs with non-finite losses or weights as outliers.
    spike_rise, spike_window, spike_tolerance
        Unrecovered-spike rule; see :class:`~trainmap.models.labels.LabelRule`.
    labels : str or None
        CSV with ``run,label`` that replaces the label rules.
    features : str or None
        Comma-separated feature families or column prefixes, e.g. ``"hu,loss"``;
        None uses every feature column.
    exclude : list of str
        Runs kept out of training (held out for scoring).
    folds : int or None
        Stratified folds of runs for cross-validation; None is leave-one-run-out.
    name : str or None
        Registered model name in MLflow; defaults to the output folder name.
    random_state : int
        Seed of the detector, the folds and UMAP.
    n_estimators, max_depth, learning_rate, min_child_weight, colsample_bytree,
    kind, min_tree_positives, centroid_features, calibration
        Detector parameters; see :class:`~trainmap.models.detector.OutlierDetector`.
    """

    horizon: list[str] = field(default_factory=lambda: ["1%", "2%", "5%", "10%", "25%"])
    threshold: float | None = 3.5
    label_metric: str = "loss/eval"
    divergence: bool = True
    spike_rise: float | None = None
    spike_window: int = 10
    spike_tolerance: float | None = None
    labels: str | None = None
    features: str | None = None
    exclude: list[str] = field(default_factory=list)
    folds: int | None = None
    name: str | None = None
    random_state: int = 0
    n_estimators: int = 200
    max_depth: int = 2
    learning_rate: float = 0.05
    min_child_weight: float = 0.01
    colsample_bytree: float = 0.5
    kind: str = "auto"
    min_tree_positives: int = 5
    centroid_features: int = 20
    calibration: str = "auto"

    def __post_init__(self):
        if isinstance(self.horizon, (str, int)):
            self.horizon = [self.horizon]
        self.horizon = [str(value) for value in self.horizon]

    def label_rule(self) -> LabelRule:
        """Return the label rule these settings describe."""
        return LabelRule(metric=self.label_metric, threshold=self.threshold, divergence=self.divergence,
                         spike_rise=self.spike_rise, spike_window=self.spike_window,
                         spike_tolerance=self.spike_tolerance)

    def detector_params(self) -> dict:
        """Return the keyword arguments of :class:`OutlierDetector`."""
        return {
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "min_child_weight": self.min_child_weight,
            "colsample_bytree": self.colsample_bytree,
            "kind": self.kind,
            "min_tree_positives": self.min_tree_positives,
            "centroid_features": self.centroid_features,
            "calibration": self.calibration,
            "random_state": self.random_state,
        }


@dataclass
class TrainResult:
    """Outputs of :func:`train_detector`."""

    artifact: DetectorArtifact
    labels: pd.DataFrame
    cv_predictions: pd.DataFrame
    cv_table: pd.DataFrame
    rule: LabelRule
    detector_params: dict
    registered_version: str | None = None

    @property
    def cv_metrics(self) -> dict:
        """CV metrics of the largest horizon, with run and outlier counts."""
        row = self.cv_table.sort_values("horizon").iloc[-1]
        return {key: (float(row[key]) if key not in ("n_runs", "n_outliers", "horizon") else int(row[key]))
                for key in ("horizon", "auroc", "auroc_low", "auroc_high", "average_precision", "brier",
                            "n_runs", "n_outliers")}


def resolve_labels(table: pd.DataFrame, config: TrainConfig, curves=None) -> tuple[pd.DataFrame, LabelRule]:
    """Return per-run labels (from the rules or the CSV) and the rule used."""
    rule = config.label_rule()
    if config.labels:
        labels = read_labels(config.labels)
        unknown = sorted(set(labels["run"]) - set(table["run"]))
        if unknown:
            warnings.warn(f"labels file names run(s) {unknown} that the feature table lacks; ignoring them", stacklevel=2)
        return labels[labels["run"].isin(table["run"])].reset_index(drop=True), rule
    return label_runs(table, rule, curves), rule


def select_features(table: pd.DataFrame, selection: str | None) -> list[str] | None:
    """Return the feature columns matching comma-separated families or prefixes."""
    from trainmap.features.table import feature_columns

    if not selection:
        return None
    prefixes = [item.strip() for item in selection.split(",") if item.strip()]
    # "hu" selects the family hu/*; "hu/L2" selects that column (and hu/L2_*).
    patterns = [prefix if "/" in prefix else prefix + "/" for prefix in prefixes]
    chosen = [column for column in feature_columns(table)
              if str(column).startswith(tuple(patterns)) or column in prefixes]
    if not chosen:
        families = sorted({str(c).split("/")[0] for c in feature_columns(table)})
        raise ValueError(f"--features {selection!r} matches no feature column; the table has families {families}")
    return chosen


def training_labels(labels: pd.DataFrame, exclude: list[str]) -> pd.DataFrame:
    """Drop held-out and unlabelled runs, warning about the latter."""
    unlabelled = labels[labels["label"].isna() & ~labels["run"].isin(exclude)]
    for _, row in unlabelled.iterrows():
        warnings.warn(f"run {row['run']} has no label ({row['reason']}); it is left out", stacklevel=3)
    kept = labels[labels["label"].notna() & ~labels["run"].isin(exclude)]
    return kept.reset_index(drop=True)


def train_detector(table: pd.DataFrame, config: TrainConfig, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Label, cross-validate, fit, map and save one detector per horizon.

    Raises
    ------
    ValueError
        If no horizon is given or the labelled runs cannot fill every training
        fold with both classes (the message gives the class counts).
    """
    from trainmap.models.evaluation import cross_validate_methods, metrics_table

    if not config.horizon:
        raise ValueError("a horizon is required: pass --horizon STEP (or percentages such as 5%)")
    labels, rule = resolve_labels(table, config)
    kept = training_labels(labels, config.exclude)
    runs = kept["run"].tolist()
    y = kept["label"].to_numpy(dtype=int)
    train_table = table[table["run"].isin(runs)]
    features = select_features(train_table, config.features)
    horizons = resolve_horizons(train_table, config.horizon)

    predictions, splits, resolved = cross_validate_methods(
        train_table, kept, horizons, ["detector"], config.detector_params(), features,
        config.folds, config.random_state, progress)
    final_step = int(table["step"].max())
    cv_table = metrics_table(predictions, random_state=config.random_state, final_step=final_step)

    models = []
    for horizon in horizons:
        cv = cv_table[cv_table["horizon"] == horizon].iloc[0].to_dict()
        cv["scheme"] = splits.scheme
        models.append(_fit_horizon(train_table, runs, y, horizon, features, resolved, cv, config.random_state))
    artifact = DetectorArtifact(models, _metadata(config, rule, labels, resolved, final_step))
    folder = artifact.save(out_dir)
    predictions.drop(columns="method").to_csv(folder / CV_FILE, index=False)
    return TrainResult(artifact, labels, predictions, cv_table, rule, resolved)


def cross_validate(
    X: np.ndarray, y: np.ndarray, runs: list[str], params: dict, folds: int | None = None
) -> tuple[pd.DataFrame, dict]:
    """Cross-validate the scaler + detector pipeline on arrays, by run.

    Splits are leave-one-run-out, or ``folds`` stratified folds of runs.

    Each fold refits the scaler on the training runs only, so the held-out run
    never shapes its own normalisation; the detector's kind and calibration are
    fixed once for all folds.

    Returns
    -------
    predictions : pandas.DataFrame
        ``run``, ``label``, ``risk`` (out of fold).
    metrics : dict
        ``auroc``, ``average_precision``, ``brier``, ``n_runs``, ``n_outliers``.
    """
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline

    from trainmap.models.evaluation import make_splits, resolve_detector_params, score_predictions

    y = np.asarray(y, dtype=int)
    splits = make_splits(y, folds)
    resolved = resolve_detector_params(params, splits.min_training_counts(y)[0])
    # One prior for every fold; see OutlierDetector's `prior` for why.
    pipeline = make_pipeline(MADScaler(), OutlierDetector(**dict(resolved, prior=float(y.mean()))))
    risk = cross_val_predict(pipeline, X, y, cv=splits.folds, method="predict_proba")[:, 1]
    metrics = {**score_predictions(y, risk), "n_runs": int(len(y)), "n_outliers": int(y.sum())}
    return pd.DataFrame({"run": runs, "label": y, "risk": risk}), metrics


def _fit_horizon(table, runs, y, horizon, features, params, cv, random_state) -> HorizonModel:
    """Fit the scaler, detector and run map of one horizon on all training runs."""
    from trainmap.map import embed

    spec = make_spec(table, horizon, features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # missing steps were reported by CV already
        raw = run_vectors(table, spec, runs).to_numpy(dtype=float)
    scaler = MADScaler().fit(raw)
    scaled = scaler.transform(raw)
    detector = OutlierDetector(**params).fit(scaled, y)
    coords = embed(scaled, random_state=random_state)
    return HorizonModel(spec, scaler, detector, list(runs), y, scaled, coords, cv)


def _metadata(config: TrainConfig, rule: LabelRule, labels: pd.DataFrame, resolved: dict, final_step: int) -> dict:
    """Return the artifact's descriptive metadata."""
    return {
        "label_rule": rule.to_dict() if not config.labels else {"rule": "csv", "path": str(config.labels)},
        "labels": labels.assign(label=labels["label"].astype(float)).to_dict(orient="records"),
        "final_step": final_step,
        "train_config": asdict(config),
        "detector_params": resolved,
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
