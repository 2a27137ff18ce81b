"""Run vectors: one fixed-length vector per run from its checkpoints up to a horizon.

A run vector concatenates the features of the run's checkpoints at the reference
steps <= horizon; column ``hu/L2@40`` is feature ``hu/L2`` at step 40. Columns are
later scaled by :class:`MADScaler`, fitted across the ensemble's runs, so each
feature is normalised against the ensemble *at the same step* and never against
the run's own later checkpoints.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from trainmap.features.table import feature_columns

logger = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of normal data


@dataclass
class RunVectorSpec:
    """Schema of a run vector: its horizon, checkpoint steps and features.

    Attributes
    ----------
    horizon : int
        Last step the vector may use.
    steps : list of int
        Reference steps <= horizon, ascending.
    features : list of str
        Feature columns of the feature table.
    """

    horizon: int
    steps: list[int]
    features: list[str]

    @property
    def columns(self) -> list[str]:
        """Column names ``feature@step``, grouped by step, then feature."""
        return [f"{feature}@{step}" for step in self.steps for feature in self.features]

    def to_dict(self) -> dict:
        return {"horizon": self.horizon, "steps": list(self.steps), "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict) -> "RunVectorSpec":
        return cls(int(data["horizon"]), [int(s) for s in data["steps"]], list(data["features"]))


def make_spec(table: pd.DataFrame, horizon: int, features: list[str] | None = None) -> RunVectorSpec:
    """Choose the reference steps and features of run vectors at ``horizon``.

    Steps are those <= horizon that at least half of the runs have, so one run
    with an extra checkpoint does not add a column of gaps. Features default to
    every feature column with at least one finite value at those steps.

    Raises
    ------
    ValueError
        If no checkpoint lies at or below the horizon.
    """
    early = table[table["step"] <= horizon]
    if early.empty:
        first = int(table["step"].min()) if len(table) else None
        raise ValueError(
            f"no checkpoint at or below horizon {horizon}; the earliest step in the "
            f"feature table is {first}. Choose --horizon >= {first}"
        )
    n_runs = table["run"].nunique()
    counts = early.groupby("step")["run"].nunique()
    steps = sorted(int(step) for step, count in counts.items() if count * 2 >= n_runs)
    if features is None:
        candidates = feature_columns(table)
        rows = early[early["step"].isin(steps)]
        features = [column for column in candidates if np.isfinite(rows[column].to_numpy(float)).any()]
    if not features:
        raise ValueError("the feature table has no feature columns with finite values up to the horizon")
    return RunVectorSpec(int(horizon), steps, list(features))


def run_vectors(table: pd.DataFrame, spec: RunVectorSpec, runs: list[str] | None = None) -> pd.DataFrame:
    """Build the run vectors of ``runs`` (default: every run in the table).

    Missing checkpoints or features become NaN, with a warning naming the run and
    steps. Returns a DataFrame indexed by run with ``spec.columns``.

    Raises
    ------
    ValueError
        If a requested run is not in the table, or a spec feature is missing.
    """
    missing_features = [feature for feature in spec.features if feature not in table.columns]
    if missing_features:
        raise ValueError(
            f"the feature table lacks feature column(s) {missing_features[:5]} that the "
            "run vector needs; extract with the same feature families as the detector"
        )
    runs = sorted(table["run"].unique()) if runs is None else list(runs)
    unknown = sorted(set(runs) - set(table["run"]))
    if unknown:
        raise ValueError(f"run(s) {unknown} are not in the feature table")

    early = table[table["run"].isin(runs) & table["step"].isin(spec.steps)]
    wide = early.set_index(["run", "step"])[spec.features].unstack("step")
    wide = wide.reindex(index=runs)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([spec.features, spec.steps]))
    _warn_missing_steps(early, runs, spec.steps)
    # Order columns by step, then feature, to match spec.columns.
    ordered = [(feature, step) for step in spec.steps for feature in spec.features]
    vectors = wide[ordered]
    vectors.columns = spec.columns
    vectors.index.name = "run"
    return vectors.astype(float)


class MADScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Centre each column on its median and divide by its scaled MAD.

    Fitted on the ensemble's run vectors, it normalises each (feature, step)
    column across runs. NaN values are ignored when fitting and kept when
    transforming.

    Attributes
    ----------
    center_ : ndarray of shape (n_features,)
        Column medians (0 where a column has no finite value).
    scale_ : ndarray of shape (n_features,)
        ``1.4826 * MAD`` per column, or 1 where that is 0 or undefined.
    n_features_in_ : int
    """

    def fit(self, X, y=None):
        """Compute the column medians and scales; returns self."""
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            center = np.nanmedian(X, axis=0)
            scale = MAD_TO_SIGMA * np.nanmedian(np.abs(X - center), axis=0)
        self.center_ = np.where(np.isfinite(center), center, 0.0)
        self.scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return self

    def transform(self, X):
        """Return ``(X - center_) / scale_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return (X - self.center_) / self.scale_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _warn_missing_steps(early: pd.DataFrame, runs: list[str], steps: list[int]) -> None:
    """Warn for each run that lacks some reference steps."""
    present = early.groupby("run")["step"].apply(set).to_dict()
    for run in runs:
        missing = sorted(set(steps) - present.get(run, set()))
        if missing:
            warnings.warn(
                f"run {run} has no checkpoint at step(s) {missing}; those run-vector "
                "columns are NaN",
                stacklevel=3,
            )


def resolve_horizons(table: pd.DataFrame, values: list[str | int], predicting: bool = True) -> list[int]:
    """Turn horizon requests into checkpoint steps of the table.

    Each value is a step (``"60"``) or a percentage of the final step
    (``"5%"``). A request lands on the largest step at or below it that at least
    half of the runs have (the first such step when the request is below all of
    them); requests landing on the same step collapse into one. With
    ``predicting``, a horizon at the final step is logged as a warning, because
    the labels are read there and the detector would see the outcome.

    Raises
    ------
    ValueError
        If a value is neither an integer nor a percentage in (0, 100], or is a
        step beyond the table's final step.
    """
    n_runs = table["run"].nunique()
    counts = table.groupby("step")["run"].nunique()
    common = sorted(int(step) for step, count in counts.items() if count * 2 >= n_runs)
    final_step = int(table["step"].max())
    steps = []
    requested: dict[int, list[str]] = {}
    for value in values:
        target = _horizon_target(str(value).strip(), final_step)
        if target > final_step:
            raise ValueError(
                f"horizon {value} is beyond the final step {final_step} of the table; give a "
                f"step up to {final_step} or a percentage of training such as 25%"
            )
        below = [step for step in common if step <= target]
        steps.append(below[-1] if below else common[0])
        requested.setdefault(steps[-1], []).append(str(value))
    for step, values_at_step in requested.items():
        if len(values_at_step) > 1:
            logger.info("horizons %s land on the same step %d; one model is trained there", ", ".join(values_at_step), step)
    if predicting and final_step in steps:
        logger.warning(
            "horizon %d is the final step, where the labels are read, so the detector sees the "
            "outcome it predicts; use an earlier step or a percentage below 100%%", final_step
        )
    return sorted(set(steps))


def _horizon_target(text: str, final_step: int) -> float:
    """Return the step a horizon request asks for."""
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return percent / 100 * final_step
        return int(text)
    except ValueError:
        raise ValueError(
            f"invalid horizon {text!r}; give a step such as 60 or a percentage of training "
            "such as 5%"
        ) from None
