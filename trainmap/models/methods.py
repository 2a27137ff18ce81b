"""Outlier-prediction methods compared by ``trainmap evaluate``.

Every method learns from the training runs of a feature table up to a horizon and
returns a risk per test run, so all of them run on the same splits:

- ``detector``: trainmap's detector (:class:`OutlierDetector`) on run vectors of
  every feature up to the horizon, normalised across runs at each step;
- ``early_loss``: logistic regression on the ``loss/`` features up to the horizon
  only, the baseline every practitioner already has;
- ``last_checkpoint``: the detector on the features of the horizon's checkpoint
  alone, which shows what the trajectory adds;
- ``hmm``: the training-map method of Hu et al. (2023) as used for PolyPythias: a
  Gaussian HMM with diagonal covariance over the ``hu/`` features of the training
  runs' checkpoints up to the horizon, its number of states chosen by BIC among
  1-8, and each run's state occupancy (the fraction of its checkpoints in each
  state) fed to a logistic regression.

Probabilities of the logistic regressions are fitted with balanced class weights
and then shifted back to a prior, as the detector's are: the outlier rate of all
labelled runs under cross-validation (so it is the same in every fold), else the
training runs' rate.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainmap.models.detector import OutlierDetector
from trainmap.models.vectors import MADScaler, RunVectorSpec, make_spec, run_vectors

logger = logging.getLogger(__name__)

METHODS = ("detector", "early_loss", "last_checkpoint", "hmm")


@dataclass
class DetectorMethod:
    """The detector on run vectors; ``last_step_only`` gives the last-checkpoint baseline.

    Attributes
    ----------
    params : dict
        :class:`OutlierDetector` parameters, with ``kind`` and ``calibration``
        already resolved so that every fold fits the same kind of model.
    features : list of str or None
        Feature columns; None uses every feature column.
    last_step_only : bool
        Use only the checkpoint at the horizon instead of every step up to it.
    """

    params: dict = field(default_factory=dict)
    features: list[str] | None = None
    last_step_only: bool = False
    name: str = "detector"

    def fit(self, table: pd.DataFrame, runs: list[str], y: np.ndarray, horizon: int) -> "DetectorMethod":
        spec = make_spec(table[table["run"].isin(runs)], horizon, self.features)
        if self.last_step_only:
            spec = RunVectorSpec(spec.horizon, spec.steps[-1:], spec.features)
        self.spec_ = spec
        raw = _vectors(table, spec, runs)
        self.scaler_ = MADScaler().fit(raw)
        self.detector_ = OutlierDetector(**self.params).fit(self.scaler_.transform(raw), y)
        return self

    def predict(self, table: pd.DataFrame, runs: list[str]) -> np.ndarray:
        scaled = self.scaler_.transform(_vectors(table, self.spec_, runs))
        return self.detector_.predict_proba(scaled)[:, 1]

    def renormalise(self, table: pd.DataFrame, runs: list[str]) -> None:
        """Refit the normalisation on other runs (no labels), e.g. an ensemble of another width."""
        self.scaler_ = MADScaler().fit(_vectors(table, self.spec_, runs))


@dataclass
class EarlyLossMethod:
    """Logistic regression on the ``loss/`` features up to the horizon."""

    C: float = 0.1
    prior: float | None = None
    name: str = "early_loss"

    def fit(self, table: pd.DataFrame, runs: list[str], y: np.ndarray, horizon: int) -> "EarlyLossMethod":
        losses = [c for c in table.columns if str(c).startswith("loss/")]
        if not losses:
            raise ValueError("the early_loss baseline needs loss/ columns; extract with the loss family")
        self.spec_ = make_spec(table[table["run"].isin(runs)], horizon, losses)
        raw = _vectors(table, self.spec_, runs)
        self.scaler_ = MADScaler().fit(raw)
        self.model_ = _PriorLogistic(self.C, self.prior).fit(np.nan_to_num(self.scaler_.transform(raw)), y)
        return self

    def predict(self, table: pd.DataFrame, runs: list[str]) -> np.ndarray:
        scaled = np.nan_to_num(self.scaler_.transform(_vectors(table, self.spec_, runs)))
        return self.model_.predict_risk(scaled)

    def renormalise(self, table: pd.DataFrame, runs: list[str]) -> None:
        """Refit the normalisation on other runs (no labels)."""
        self.scaler_ = MADScaler().fit(_vectors(table, self.spec_, runs))


@dataclass
class HMMMethod:
    """Hu et al.'s latent-state training map: HMM states, then logistic regression.

    Attributes
    ----------
    max_states : int
        Largest number of HMM states tried; BIC picks among 1..max_states.
    random_state : int
        Seed of the HMM fits.
    """

    max_states: int = 8
    random_state: int = 0
    C: float = 1.0
    prior: float | None = None
    name: str = "hmm"

    def fit(self, table: pd.DataFrame, runs: list[str], y: np.ndarray, horizon: int) -> "HMMMethod":
        self.features_ = [c for c in table.columns if str(c).startswith("hu/")]
        if not self.features_:
            raise ValueError("the hmm method needs hu/ columns; extract with the hu family")
        self.horizon_ = horizon
        sequences = self._sequences(table, runs)
        stacked = np.vstack(sequences)
        # z-score with the training runs' checkpoints only; the test runs never shape it.
        self.mean_ = np.nanmean(stacked, axis=0)
        std = np.nanstd(stacked, axis=0)
        self.std_ = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        scaled = [self._scale(sequence) for sequence in sequences]
        self.hmm_, self.bic_ = _fit_hmm_by_bic(scaled, self.max_states, self.random_state)
        self.n_states_ = self.hmm_.n_components
        occupancy = np.array([self._occupancy(sequence) for sequence in scaled])
        self.model_ = _PriorLogistic(self.C, self.prior).fit(occupancy, y)
        return self

    def predict(self, table: pd.DataFrame, runs: list[str]) -> np.ndarray:
        occupancy = np.array([self._occupancy(self._scale(s)) for s in self._sequences(table, runs)])
        return self.model_.predict_risk(occupancy)

    def renormalise(self, table: pd.DataFrame, runs: list[str]) -> None:
        """Refit the z-scoring on other runs' checkpoints (no labels)."""
        stacked = np.vstack(self._sequences(table, runs))
        self.mean_ = np.nanmean(stacked, axis=0)
        std = np.nanstd(stacked, axis=0)
        self.std_ = np.where(np.isfinite(std) & (std > 0), std, 1.0)

    def _sequences(self, table: pd.DataFrame, runs: list[str]) -> list[np.ndarray]:
        """Return each run's hu/ feature rows up to the horizon, in step order."""
        early = table[(table["step"] <= self.horizon_) & table["run"].isin(runs)].sort_values(["run", "step"])
        groups = {run: rows[self.features_].to_numpy(dtype=float) for run, rows in early.groupby("run")}
        missing = [run for run in runs if run not in groups or len(groups[run]) == 0]
        if missing:
            raise ValueError(f"run(s) {missing[:5]} have no checkpoint at or before step {self.horizon_}")
        return [groups[run] for run in runs]

    def _scale(self, sequence: np.ndarray) -> np.ndarray:
        return np.nan_to_num((sequence - self.mean_) / self.std_, nan=0.0, posinf=0.0, neginf=0.0)

    def _occupancy(self, sequence: np.ndarray) -> np.ndarray:
        states = self.hmm_.predict(sequence)
        return np.bincount(states, minlength=self.n_states_) / len(states)


def make_method(name: str, detector_params: dict, features: list[str] | None = None, random_state: int = 0,
                prior: float | None = None):
    """Return a fresh method object by name; ``prior`` fixes the outlier rate its risks restore."""
    if name == "detector":
        return DetectorMethod(dict(detector_params, prior=prior), features)
    if name == "last_checkpoint":
        return DetectorMethod(dict(detector_params, prior=prior), features, last_step_only=True,
                              name="last_checkpoint")
    if name == "early_loss":
        return EarlyLossMethod(prior=prior)
    if name == "hmm":
        return HMMMethod(random_state=random_state, prior=prior)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


class _PriorLogistic:
    """L2 logistic regression fitted with balanced weights, shifted back to a prior."""

    def __init__(self, C: float, prior: float | None = None):
        self.C = C
        self.prior = prior

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_PriorLogistic":
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000).fit(X, y)
        positives = float(np.mean(y)) if self.prior is None else self.prior
        self.shift = math.log(positives / (1.0 - positives))
        return self

    def predict_risk(self, X: np.ndarray) -> np.ndarray:
        margin = self.model.decision_function(X) + self.shift
        return 1.0 / (1.0 + np.exp(-margin))


def _vectors(table: pd.DataFrame, spec: RunVectorSpec, runs: list[str]) -> np.ndarray:
    """Return run vectors as an array, without the per-run missing-step warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return run_vectors(table, spec, runs).to_numpy(dtype=float)


def _fit_hmm_by_bic(sequences: list[np.ndarray], max_states: int, random_state: int):
    """Fit diagonal Gaussian HMMs with 1..max_states states; return the lowest-BIC one."""
    from hmmlearn.hmm import GaussianHMM

    data = np.vstack(sequences)
    lengths = [len(sequence) for sequence in sequences]
    # hmmlearn logs a warning per non-improving EM step; on short sequences that is noise.
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    best, best_bic, bics = None, math.inf, {}
    for n_states in range(1, max_states + 1):
        if n_states > len(data):
            break
        model = GaussianHMM(n_components=n_states, covariance_type="diag", n_iter=100,
                            random_state=random_state, min_covar=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notices on tiny sequences
            try:
                model.fit(data, lengths)
                bic = model.bic(data, lengths)
            except (ValueError, np.linalg.LinAlgError) as error:
                logger.debug("HMM with %d states failed to fit: %s", n_states, error)
                continue
        bics[n_states] = float(bic)
        if bic < best_bic:
            best, best_bic = model, bic
    if best is None:
        raise ValueError("no HMM could be fitted to the training runs' hu/ features")
    return best, bics
