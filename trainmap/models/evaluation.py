"""Honest evaluation: grouped cross-validation of every method on the same splits.

Splits are by run (one run is one group): leave-one-run-out by default, or
stratified folds of runs. Every method and every horizon sees exactly the same
splits, so their out-of-fold risks compare run for run. Metrics come with
bootstrap confidence intervals that resample runs within each class, so every
resample holds both outliers and stable runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainmap.models.detector import OutlierDetector
from trainmap.models.methods import make_method

logger = logging.getLogger(__name__)


@dataclass
class Splits:
    """Train/test run indices of each fold.

    Attributes
    ----------
    scheme : str
        ``"leave-one-run-out"`` or ``"stratified-<k>-fold"``.
    folds : list of (ndarray, ndarray)
        Train and test indices into the run list.
    """

    scheme: str
    folds: list[tuple[np.ndarray, np.ndarray]]

    def min_training_counts(self, y: np.ndarray) -> tuple[int, int]:
        """Return the fewest outliers and fewest stable runs in any training fold."""
        outliers = min(int(y[train].sum()) for train, _ in self.folds)
        stable = min(int((1 - y[train]).sum()) for train, _ in self.folds)
        return outliers, stable


def make_splits(y: np.ndarray, folds: int | None = None, random_state: int = 0) -> Splits:
    """Return leave-one-run-out splits, or ``folds`` stratified folds of runs.

    Raises
    ------
    ValueError
        If some training fold would lack outliers or stable runs; the message
        gives the class counts.
    """
    from sklearn.model_selection import LeaveOneOut, StratifiedKFold

    y = np.asarray(y, dtype=int)
    outliers, stable = int(y.sum()), int(len(y) - y.sum())
    if folds is None:
        scheme, splitter = "leave-one-run-out", LeaveOneOut()
    else:
        if folds < 2 or folds > min(outliers, stable):
            raise ValueError(
                f"{folds} stratified folds need at least {folds} outlier and {folds} stable runs, "
                f"got {outliers} outlier(s) and {stable} stable run(s); use fewer --folds or "
                "leave-one-run-out (the default)"
            )
        scheme = f"stratified-{folds}-fold"
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    splits = Splits(scheme, [(train, test) for train, test in splitter.split(np.zeros(len(y)), y)])
    fewest_outliers, fewest_stable = splits.min_training_counts(y)
    if fewest_outliers < 1 or fewest_stable < 1:
        raise ValueError(
            f"cross-validation needs an outlier and a stable run in every training fold; with "
            f"{outliers} outlier(s) and {stable} stable run(s), some {scheme} training fold has "
            f"{fewest_outliers} outlier(s) and {fewest_stable} stable run(s). Label more runs "
            "(train more seeds or lower the label --threshold)"
        )
    return splits


def resolve_detector_params(params: dict, fewest_outliers: int) -> dict:
    """Fix the detector's ``kind`` and ``calibration`` for a given fewest-outlier count.

    Resolving once, from the fold with the fewest outliers, keeps every fold (and
    the final model) on the same kind of model, so out-of-fold risks compare.
    """
    detector = OutlierDetector(**params)
    resolved = dict(params)
    resolved["kind"] = detector.resolve_kind(fewest_outliers)
    calibrate = detector.calibration == "sigmoid" or (
        detector.calibration == "auto" and fewest_outliers >= detector.min_calibration_positives
    )
    resolved["calibration"] = "sigmoid" if calibrate else "none"
    return resolved


def cross_validate_methods(
    table: pd.DataFrame,
    labels: pd.DataFrame,
    horizons: list[int],
    methods: list[str],
    detector_params: dict | None = None,
    features: list[str] | None = None,
    folds: int | None = None,
    random_state: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, Splits, dict]:
    """Out-of-fold risks of every method at every horizon, on shared splits.

    Parameters
    ----------
    table : pandas.DataFrame
        Feature table.
    labels : pandas.DataFrame
        ``run`` and ``label`` (0/1) of the labelled runs to evaluate.
    horizons : list of int
        Horizon steps.
    methods : list of str
        Names from :data:`trainmap.models.methods.METHODS`.
    detector_params : dict, optional
        :class:`OutlierDetector` parameters.
    features : list of str, optional
        Feature columns of the detector methods.
    folds : int, optional
        Stratified folds; None means leave-one-run-out.

    Returns
    -------
    predictions : pandas.DataFrame
        ``method``, ``horizon``, ``run``, ``label``, ``fold``, ``risk``.
    splits : Splits
    resolved : dict
        The detector parameters every fold used (``prior`` aside).
    """
    from tqdm.auto import tqdm

    runs = labels["run"].tolist()
    y = labels["label"].to_numpy(dtype=int)
    splits = make_splits(y, folds, random_state)
    fewest_outliers, _ = splits.min_training_counts(y)
    resolved = resolve_detector_params(dict(detector_params or {}, random_state=random_state), fewest_outliers)
    logger.info("detector for every fold: kind=%s, calibration=%s (fewest training outliers: %d)",
                resolved["kind"], resolved["calibration"], fewest_outliers)

    # One prior for every fold; see OutlierDetector's `prior` for why.
    prior = float(y.mean())
    rows = []
    jobs = [(method, horizon) for method in methods for horizon in horizons]
    for method, horizon in tqdm(jobs, desc="evaluate", disable=not progress, dynamic_ncols=True):
        for index, (train, test) in enumerate(splits.folds):
            train_runs = [runs[i] for i in train]
            test_runs = [runs[i] for i in test]
            model = make_method(method, resolved, features, random_state, prior)
            model.fit(table, train_runs, y[train], horizon)
            risk = model.predict(table, test_runs)
            for run, label, value in zip(test_runs, y[test], risk):
                rows.append({"method": method, "horizon": horizon, "run": run, "label": int(label),
                             "fold": index, "risk": float(value)})
    return pd.DataFrame(rows), splits, resolved


def transfer_methods(
    train_table: pd.DataFrame,
    train_labels: pd.DataFrame,
    test_table: pd.DataFrame,
    test_labels: pd.DataFrame,
    horizons: list[int],
    methods: list[str],
    detector_params: dict | None = None,
    features: list[str] | None = None,
    renormalise: bool = True,
    random_state: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Train every method on one ensemble and score the runs of another.

    With ``renormalise``, each method's normalisation is refitted on the test
    ensemble's own runs (no labels are used), so features whose scale changes
    with model width are compared within their ensemble, as in training.

    Returns
    -------
    predictions : pandas.DataFrame
        ``method``, ``horizon``, ``run``, ``label``, ``fold`` (always 0), ``risk``.
    resolved : dict
        The detector parameters used.
    """
    y = train_labels["label"].to_numpy(dtype=int)
    resolved = resolve_detector_params(dict(detector_params or {}, random_state=random_state), int(y.sum()))
    train_runs = train_labels["run"].tolist()
    test_runs = test_labels["run"].tolist()
    rows = []
    for method in methods:
        for horizon in horizons:
            model = make_method(method, resolved, features, random_state).fit(train_table, train_runs, y, horizon)
            if renormalise:
                model.renormalise(test_table, test_runs)
            risk = model.predict(test_table, test_runs)
            for run, label, value in zip(test_runs, test_labels["label"].astype(int), risk):
                rows.append({"method": method, "horizon": horizon, "run": run, "label": int(label),
                             "fold": 0, "risk": float(value)})
    return pd.DataFrame(rows), resolved


def evaluate_methods(table: pd.DataFrame, config, options, output, test_table: pd.DataFrame | None = None,
                     progress: bool = True) -> dict:
    """Run ``trainmap evaluate``: labels, horizons, shared splits, metrics, plot and CSVs.

    Parameters
    ----------
    table : pandas.DataFrame
        Feature table of the ensemble (the training ensemble when ``test_table`` is given).
    config : TrainConfig
        Labels, horizons, features, folds and detector parameters.
    options : EvaluateConfig
        Methods, bootstrap resamples, test table.
    output : Path
        Folder for ``metrics.csv``, ``predictions.csv`` and ``auroc.png``.
    """
    from pathlib import Path

    from trainmap.models.training import resolve_labels, select_features, training_labels
    from trainmap.models.vectors import resolve_horizons

    labels, rule = resolve_labels(table, config)
    kept = training_labels(labels, config.exclude)
    features = select_features(table, config.features)
    horizons = resolve_horizons(table[table["run"].isin(kept["run"])], config.horizon)
    final_step = int(table["step"].max())
    if test_table is None:
        predictions, splits, resolved = cross_validate_methods(
            table, kept, horizons, options.methods, config.detector_params(), features, config.folds,
            config.random_state, progress)
        scheme, evaluated = splits.scheme, kept
    else:
        test_labels, _ = resolve_labels(test_table, config)
        evaluated = training_labels(test_labels, [])
        predictions, resolved = transfer_methods(
            table, kept, test_table, evaluated, horizons, options.methods, config.detector_params(), features,
            random_state=config.random_state)
        scheme = "train on the first table, test on the second (normalisation refitted on the second)"
    metrics = metrics_table(predictions, options.n_boot, config.random_state, final_step)

    output = Path(output)
    files = {"metrics": output / "metrics.csv", "predictions": output / "predictions.csv",
             "plot": output / "auroc.png"}
    metrics.to_csv(files["metrics"], index=False)
    predictions.to_csv(files["predictions"], index=False)
    plot_auroc(metrics, files["plot"], title=f"{len(evaluated)} runs, {int(evaluated['label'].sum())} outliers; {scheme}")
    return {"metrics": metrics, "predictions": predictions, "files": files, "scheme": scheme,
            "horizons": horizons, "rule": rule.describe() if not config.labels else f"csv {config.labels}",
            "n_runs": len(evaluated), "n_outliers": int(evaluated["label"].sum()), "detector_params": resolved}


def score_predictions(y: np.ndarray, risk: np.ndarray) -> dict:
    """Return AUROC, average precision and Brier score of one set of risks.

    Computed with numpy rather than sklearn.metrics because the bootstrap calls
    this thousands of times; the tests check both give the same numbers.
    """
    y = np.asarray(y, dtype=int)
    risk = np.asarray(risk, dtype=float)
    return {"auroc": _auroc(y, risk), "average_precision": _average_precision(y, risk),
            "brier": float(np.mean((risk - y) ** 2))}


def _auroc(y: np.ndarray, risk: np.ndarray) -> float:
    """Return the Mann-Whitney AUROC, ties counting one half."""
    from scipy.stats import rankdata

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(risk)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_precision(y: np.ndarray, risk: np.ndarray) -> float:
    """Return average precision as sklearn defines it (step-wise, ties grouped)."""
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-risk, kind="mergesort")
    sorted_risk, sorted_y = risk[order], y[order]
    # The last index of each group of tied risks is where precision and recall are read.
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_risk)), len(y) - 1]
    true_positives = np.cumsum(sorted_y)[last_of_group]
    precision = true_positives / (last_of_group + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def metrics_table(predictions: pd.DataFrame, n_boot: int = 1000, random_state: int = 0,
                  final_step: int | None = None) -> pd.DataFrame:
    """Summarise out-of-fold risks per method and horizon with 95% bootstrap intervals.

    Returns
    -------
    pandas.DataFrame
        One row per (method, horizon): ``fraction`` of training seen (when
        ``final_step`` is given), ``n_runs``, ``n_outliers``, and for each metric
        its value and ``_low``/``_high`` interval bounds.
    """
    rng = np.random.default_rng(random_state)
    rows = []
    for (method, horizon), group in predictions.groupby(["method", "horizon"], sort=False):
        y = group["label"].to_numpy(dtype=int)
        risk = group["risk"].to_numpy(dtype=float)
        row = {"method": method, "horizon": int(horizon), "n_runs": len(y), "n_outliers": int(y.sum())}
        if final_step:
            row["fraction"] = horizon / final_step
        point = score_predictions(y, risk)
        intervals = _bootstrap(y, risk, n_boot, rng)
        for name, value in point.items():
            row[name] = value
            row[f"{name}_low"], row[f"{name}_high"] = intervals[name]
        rows.append(row)
    return pd.DataFrame(rows)


def _bootstrap(y: np.ndarray, risk: np.ndarray, n_boot: int, rng) -> dict[str, tuple[float, float]]:
    """Return percentile 95% intervals from stratified run resamples."""
    positives = np.flatnonzero(y == 1)
    negatives = np.flatnonzero(y == 0)
    samples = {"auroc": [], "average_precision": [], "brier": []}
    for _ in range(n_boot):
        index = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        for name, value in score_predictions(y[index], risk[index]).items():
            samples[name].append(value)
    return {name: (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
            for name, values in samples.items()}


def plot_auroc(table: pd.DataFrame, path, title: str = "") -> None:
    """Plot AUROC with its interval against the fraction of training seen, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    x_column = "fraction" if "fraction" in table.columns else "horizon"
    for offset, (method, group) in enumerate(table.groupby("method", sort=False)):
        group = group.sort_values(x_column)
        x = group[x_column].to_numpy(dtype=float)
        # Spread methods a little on the x axis so their intervals do not overlap.
        x = x * (1 + 0.02 * (offset - 1.5)) if x_column == "fraction" else x + 0.3 * (offset - 1.5)
        errors = [group["auroc"] - group["auroc_low"], group["auroc_high"] - group["auroc"]]
        axis.errorbar(x, group["auroc"], yerr=errors, marker="o", capsize=3, label=method)
    axis.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance")
    if x_column == "fraction":
        axis.set_xscale("log")
        axis.set_xlabel("fraction of training seen (horizon / final step)")
    else:
        axis.set_xlabel("horizon step")
    axis.set_ylabel("AUROC (out of fold, 95% bootstrap interval)")
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
