"""The outlier detector: gradient-boosted trees (XGBoost) on run vectors.

:class:`OutlierDetector` follows the scikit-learn estimator contract, so it works
with ``Pipeline`` and ``cross_val_predict``. Three choices make it usable on real
seed ensembles, which are small (PolyPythias has 10 seeds per size and 2 outliers
at 410M):

- **Class balance.** Samples are weighted inversely to class frequency while
  fitting, and the prior is put back afterwards by adding ``log(pi / (1 - pi))`` to
  the log-odds (``pi`` is the outlier fraction seen in ``fit``), so probabilities
  keep the ensemble's base rate.
- **Few outliers.** With fewer than ``min_tree_positives`` outliers, trees cannot
  tell a real precursor from one of the many columns that happen to separate one
  or two runs (every such split has the same gain). The detector then fits a
  nearest shrunken centroid (Tibshirani et al., 2002): the outlier-minus-stable
  mean of each robustly scaled column (clipped at CENTROID_CLIP MADs), soft-thresholded so that only the
  ``centroid_features`` largest differences remain, used as a diagonal linear
  discriminant. It ranks by how far a run moves in the directions the training
  outliers moved, which needs no split search.
- **Calibration.** With at least ``min_calibration_positives`` outliers, a sigmoid
  (Platt) map of the class-balanced log-odds is fitted on stratified inner
  cross-validation predictions of the training runs, before the prior shift.

``min_child_weight`` is far below XGBoost's default of 1, because with a dozen
runs the hessians ``p(1 - p)`` of a whole child can sum to less than 1 and default
XGBoost would then never split.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

logger = logging.getLogger(__name__)

MODEL_FILE = "model.ubj"
KINDS = ("auto", "trees", "centroid")
# Robust z-scores beyond this many MADs count as this many in the shrunken centroid.
CENTROID_CLIP = 5.0
CALIBRATIONS = ("auto", "sigmoid", "none")


class OutlierDetector(ClassifierMixin, BaseEstimator):
    """Classifier of run vectors into stable (0) and outlier (1) runs.

    Parameters
    ----------
    n_estimators, max_depth, learning_rate, min_child_weight, subsample,
    colsample_bytree, reg_lambda
        XGBoost parameters of the tree model.
    balance_classes : bool
        Weight samples inversely to class frequency while fitting, then restore
        the prior in the probabilities.
    kind : {"auto", "trees", "centroid"}
        Model kind. ``"auto"`` uses trees when the rarest class has at least
        ``min_tree_positives`` samples and the shrunken centroid otherwise
        (binary problems only; multiclass always uses trees).
    min_tree_positives : int
        Smallest rarest-class count for which ``"auto"`` chooses trees.
    centroid_features : int
        Columns the shrunken centroid keeps.
    calibration : {"auto", "sigmoid", "none"}
        ``"auto"`` fits a sigmoid when the rarest class has at least
        ``min_calibration_positives`` samples.
    min_calibration_positives : int
        Smallest rarest-class count for which ``"auto"`` calibrates.
    prior : float or None
        Outlier rate restored by the prior shift; None uses the rate seen in
        ``fit``. Cross-validation passes the rate of all labelled runs, because a
        rate that changes with the held-out run ranks runs by fold: held-out
        outliers would always get the lower prior, and an uninformative model
        would score an AUROC near 0 under leave-one-run-out.
    random_state : int
        Seed of XGBoost's sampling and of the inner calibration folds.

    Attributes
    ----------
    classes_ : ndarray
        Class labels seen in ``fit``.
    kind_ : str
        ``"trees"`` or ``"centroid"``: the model actually fitted.
    prior_shift_ : float
        Log-odds added to undo class balancing (0 when not balanced).
    calibration_ : tuple of (float, float) or None
        Slope and intercept of the sigmoid map, or None.
    model_ : xgboost.XGBClassifier or None
        The booster wrapper when ``kind_ == "trees"``.
    centroid_ : dict or None
        ``center``, ``scale``, ``midpoint`` and ``weights`` arrays when
        ``kind_ == "centroid"``.
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        n_estimators: int = 200,
        max_depth: int = 2,
        learning_rate: float = 0.05,
        min_child_weight: float = 0.01,
        subsample: float = 1.0,
        colsample_bytree: float = 0.5,
        reg_lambda: float = 1.0,
        balance_classes: bool = True,
        kind: str = "auto",
        min_tree_positives: int = 5,
        centroid_features: int = 20,
        calibration: str = "auto",
        min_calibration_positives: int = 4,
        prior: float | None = None,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.balance_classes = balance_classes
        self.kind = kind
        self.min_tree_positives = min_tree_positives
        self.centroid_features = centroid_features
        self.calibration = calibration
        self.min_calibration_positives = min_calibration_positives
        self.prior = prior
        self.random_state = random_state

    # ------------------------------------------------------------- fitting

    def fit(self, X, y):
        """Fit on run vectors ``X`` and labels ``y``; returns self.

        Raises
        ------
        ValueError
            If ``y`` holds only one class, or ``kind`` or ``calibration`` is invalid.
        """
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        check_classification_targets(y)
        self._check_params()
        self.classes_, encoded = np.unique(y, return_inverse=True)
        counts = np.bincount(encoded)
        if len(self.classes_) < 2:
            raise ValueError(
                f"OutlierDetector needs runs of two classes to fit, got one class "
                f"({self.classes_[0]!r}) in {len(y)} runs; label some outlier runs or "
                "loosen the label threshold"
            )
        self.kind_ = self.resolve_kind(int(counts.min()), len(self.classes_))
        self._fit_model(X, encoded)
        self.prior_shift_ = self._prior_shift(counts)
        self.calibration_ = None
        if self._wants_calibration(int(counts.min())):
            self.calibration_ = self._fit_calibration(X, encoded)
        return self

    def resolve_kind(self, rarest_count: int, n_classes: int = 2) -> str:
        """Return the model kind ``"auto"`` resolves to for this rarest-class count."""
        if self.kind != "auto":
            return self.kind
        if n_classes > 2 or rarest_count >= self.min_tree_positives:
            return "trees"
        return "centroid"

    def _check_params(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")

    def _fit_model(self, X: np.ndarray, encoded: np.ndarray) -> None:
        """Fit the tree model or the shrunken centroid."""
        self.model_ = None
        self.centroid_ = None
        if self.kind_ == "centroid":
            if len(self.classes_) != 2:
                raise ValueError("kind='centroid' supports two classes only; use kind='trees'")
            self.centroid_ = _fit_centroid(X, encoded, self.centroid_features)
            return
        weights = compute_sample_weight("balanced", encoded) if self.balance_classes else None
        self.model_ = self._new_model(len(self.classes_))
        self.model_.fit(X, encoded, sample_weight=weights)

    def _prior_shift(self, counts: np.ndarray) -> float:
        """Return the log-odds shift that restores the prior after balancing."""
        if len(counts) != 2 or not (self.balance_classes or self.kind_ == "centroid"):
            return 0.0
        if self.prior is not None:
            if not 0.0 < self.prior < 1.0:
                raise ValueError(f"prior must be in (0, 1), got {self.prior}")
            return float(math.log(self.prior / (1.0 - self.prior)))
        return float(math.log(counts[1] / counts[0]))

    def _wants_calibration(self, rarest_count: int) -> bool:
        if len(self.classes_) != 2 or self.calibration == "none":
            return False
        if self.calibration == "sigmoid":
            return True
        # NOTE: below this count the risks are only prior-shifted. A shrunken centroid's
        # then come out near 0 or 1, so rely on their ranking (the CV AUROC), not their values.
        return rarest_count >= self.min_calibration_positives

    def _fit_calibration(self, X: np.ndarray, encoded: np.ndarray) -> tuple[float, float]:
        """Fit a sigmoid on inner stratified out-of-fold log-odds; return (slope, intercept).

        The sigmoid maps the model's class-balanced log-odds and is itself fitted
        with balanced class weights, so the prior enters only through the prior
        shift added afterwards (a sigmoid fitted to this fold's own outlier rate
        would bring back the fold-dependent prior that ``prior`` removes).
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        n_splits = int(min(3, np.bincount(encoded).min()))
        if n_splits < 2:
            logger.info("not calibrating: the rarest class has fewer than 2 runs")
            return None
        inner = clone(self).set_params(calibration="none", kind=self.kind_)
        margins = np.empty(len(encoded))
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        for train, test in folds.split(X, encoded):
            fold = clone(inner).fit(X[train], encoded[train])
            margins[test] = fold._raw_margin(X[test])
        balanced = self.balance_classes or self.kind_ == "centroid"
        sigmoid = LogisticRegression(C=1e4, class_weight="balanced" if balanced else None)
        sigmoid.fit(margins.reshape(-1, 1), encoded)
        return float(sigmoid.coef_[0, 0]), float(sigmoid.intercept_[0])

    # ------------------------------------------------------------- prediction

    def decision_function(self, X) -> np.ndarray:
        """Return the outlier log-odds of each run, after prior and calibration.

        Multiclass detectors return the per-class margins, shape (n, n_classes).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        if len(self.classes_) != 2:
            return self.model_.predict(X, output_margin=True)
        return self._calibrate(self._raw_margin(X)) + self.prior_shift_

    def predict_proba(self, X) -> np.ndarray:
        """Return class probabilities, shape (n_runs, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        if len(self.classes_) != 2:
            return self.model_.predict_proba(X)
        positive = _sigmoid(self._calibrate(self._raw_margin(X)) + self.prior_shift_)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X) -> np.ndarray:
        """Return the most probable class of each run."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def contributions(self, X) -> np.ndarray:
        """Return each column's contribution to the outlier log-odds, shape (n, n_features + 1).

        The last column is the bias term, and each row sums to
        :meth:`decision_function`. For trees these are XGBoost's SHAP values
        (``pred_contribs``); for the centroid they are the terms of its linear
        discriminant. Binary detectors only.
        """
        check_is_fitted(self)
        if len(self.classes_) != 2:
            raise ValueError(f"contributions need a binary detector, this one has {len(self.classes_)} classes")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        if self.kind_ == "centroid":
            terms = _centroid_terms(self.centroid_, X)
            raw = np.column_stack([terms, np.zeros(len(X))])
        else:
            import xgboost

            raw = self.model_.get_booster().predict(xgboost.DMatrix(X, missing=np.nan), pred_contribs=True)
        if self.calibration_ is not None:
            slope, intercept = self.calibration_
            raw = raw * slope
            raw[:, -1] += intercept
        raw[:, -1] += self.prior_shift_
        return raw

    def _raw_margin(self, X: np.ndarray) -> np.ndarray:
        """Return the model's log-odds before the prior shift and calibration."""
        if self.kind_ == "centroid":
            return _centroid_terms(self.centroid_, X).sum(axis=1)
        return self.model_.predict(X, output_margin=True)

    def _calibrate(self, margin: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return margin
        slope, intercept = self.calibration_
        return slope * margin + intercept

    # ------------------------------------------------------------- persistence

    def save(self, folder: str | Path, model_file: str = MODEL_FILE) -> dict:
        """Write the booster (UBJSON) into ``folder``; return the JSON-ready state."""
        check_is_fitted(self)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "kind": self.kind_,
            "prior_shift": self.prior_shift_,
            "calibration": None if self.calibration_ is None else list(self.calibration_),
        }
        if self.kind_ == "trees":
            self.model_.save_model(folder / model_file)
            state["model_file"] = model_file
        else:
            state["centroid"] = {key: value.tolist() for key, value in self.centroid_.items()}
        return state

    @classmethod
    def load(cls, folder: str | Path, state: dict) -> "OutlierDetector":
        """Rebuild a detector written by :meth:`save` from ``folder`` and ``state``."""
        detector = cls(**state["params"])
        detector.classes_ = np.asarray(state["classes"])
        detector.n_features_in_ = int(state["n_features_in"])
        detector.kind_ = state["kind"]
        detector.prior_shift_ = float(state["prior_shift"])
        detector.calibration_ = None if state["calibration"] is None else tuple(state["calibration"])
        detector.model_ = None
        detector.centroid_ = None
        if detector.kind_ == "trees":
            detector.model_ = detector._new_model(len(detector.classes_))
            detector.model_.load_model(Path(folder) / state["model_file"])
        else:
            detector.centroid_ = {key: np.asarray(value, dtype=float) for key, value in state["centroid"].items()}
        return detector

    def _new_model(self, n_classes: int):
        import xgboost

        return xgboost.XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            min_child_weight=self.min_child_weight,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            random_state=self.random_state,
            objective="binary:logistic" if n_classes == 2 else "multi:softprob",
            # The balanced weights make the base rate 0.5; the prior shift restores it.
            base_score=0.5 if n_classes == 2 else None,
            tree_method="hist",
            n_jobs=1,
            missing=np.nan,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _fit_centroid(X: np.ndarray, encoded: np.ndarray, n_features: int) -> dict:
    """Fit a nearest shrunken centroid on robustly scaled columns."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        center = np.nanmedian(X, axis=0)
        scale = 1.4826 * np.nanmedian(np.abs(X - center), axis=0)
    center = np.where(np.isfinite(center), center, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    z = _robust_z(X, center, scale)
    positive_mean = z[encoded == 1].mean(axis=0)
    negative_mean = z[encoded == 0].mean(axis=0)
    difference = positive_mean - negative_mean
    keep = min(n_features, difference.size)
    # Soft-threshold at the (keep + 1)-th largest |difference|: `keep` columns survive.
    ranked = np.sort(np.abs(difference))[::-1]
    threshold = ranked[keep] if keep < ranked.size else 0.0
    weights = np.sign(difference) * np.maximum(np.abs(difference) - threshold, 0.0)
    return {
        "center": center,
        "scale": scale,
        "midpoint": (positive_mean + negative_mean) / 2,
        "weights": weights,
    }


def _robust_z(X: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return robust z-scores clipped to +-CENTROID_CLIP, NaN as 0.

    On a handful of runs a column's MAD can be tiny, so one run lands thousands of
    MADs out. Unclipped, that run alone would set its class mean and give the
    column a weight that swamps every other column.
    """
    return np.clip(np.nan_to_num((X - center) / scale, nan=0.0), -CENTROID_CLIP, CENTROID_CLIP)


def _centroid_terms(centroid: dict, X: np.ndarray) -> np.ndarray:
    """Return the per-column terms of the centroid's discriminant, shape (n, d)."""
    z = _robust_z(X, centroid["center"], centroid["scale"])
    # NaN (a missing checkpoint) counts as the ensemble median, so it adds nothing.
    missing = np.isnan(X)
    terms = centroid["weights"] * (z - centroid["midpoint"])
    terms[missing] = 0.0
    return terms


def _sigmoid(margin: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(margin, -700, 700)))


def read_json(path: str | Path) -> dict:
    """Read a JSON file written by trainmap."""
    import json

    return json.loads(Path(path).read_text(encoding="utf-8"))
