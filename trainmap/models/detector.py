"""The outlier detector: gradient-boosted trees (XGBoost) on run vectors.

:class:`OutlierDetector` follows the scikit-learn estimator contract, so it
works with ``Pipeline`` and ``cross_val_predict``. Its defaults suit ensembles of
10-50 runs: shallow trees and a minimum child weight far below XGBoost's default of
1. With a dozen runs the logistic hessians ``p(1 - p)`` of a whole child can sum to
less than 1, and default XGBoost would then never split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

MODEL_FILE = "model.ubj"


class OutlierDetector(ClassifierMixin, BaseEstimator):
    """XGBoost classifier of run vectors into stable (0) and outlier (1) runs.

    Parameters
    ----------
    n_estimators : int
        Boosting rounds.
    max_depth : int
        Depth of each tree.
    learning_rate : float
        Shrinkage per round.
    min_child_weight : float
        Minimum summed hessian in a child; see the module docstring.
    subsample : float
        Fraction of runs drawn per tree.
    colsample_bytree : float
        Fraction of run-vector columns drawn per tree.
    reg_lambda : float
        L2 penalty on leaf weights.
    balance_classes : bool
        Weight samples inversely to class frequency, so a few outliers are not
        drowned out by many stable runs.
    random_state : int
        Seed of XGBoost's sampling.

    Attributes
    ----------
    classes_ : ndarray
        Class labels seen in ``fit``.
    model_ : xgboost.XGBClassifier
        The fitted booster wrapper.
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
        self.random_state = random_state

    def fit(self, X, y):
        """Fit the booster on run vectors ``X`` and labels ``y``; returns self.

        Raises
        ------
        ValueError
            If ``y`` holds only one class.
        """
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"OutlierDetector needs runs of two classes to fit, got one class "
                f"({self.classes_[0]!r}) in {len(y)} runs; label some outlier runs or "
                "loosen the label threshold"
            )
        weights = compute_sample_weight("balanced", encoded) if self.balance_classes else None
        self.model_ = self._new_model(len(self.classes_))
        self.model_.fit(X, encoded, sample_weight=weights)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Return class probabilities, shape (n_runs, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return self.model_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """Return the most probable class of each run."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def contributions(self, X) -> np.ndarray:
        """Return SHAP contributions to the outlier log-odds, shape (n, n_features + 1).

        The last column is the bias term; each row sums to the log-odds of the
        positive class (XGBoost ``pred_contribs``). Binary detectors only.
        """
        import xgboost

        check_is_fitted(self)
        if len(self.classes_) != 2:
            raise ValueError(f"contributions need a binary detector, this one has {len(self.classes_)} classes")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        matrix = xgboost.DMatrix(X, missing=np.nan)
        return self.model_.get_booster().predict(matrix, pred_contribs=True)

    def save(self, folder: str | Path) -> dict:
        """Write the booster as UBJSON into ``folder``; return the JSON-ready state."""
        check_is_fitted(self)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model_.save_model(folder / MODEL_FILE)
        return {
            "model_file": MODEL_FILE,
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
        }

    @classmethod
    def load(cls, folder: str | Path, state: dict) -> "OutlierDetector":
        """Rebuild a detector written by :meth:`save` from ``folder`` and ``state``."""
        detector = cls(**state["params"])
        detector.classes_ = np.asarray(state["classes"])
        detector.n_features_in_ = int(state["n_features_in"])
        detector.model_ = detector._new_model(len(detector.classes_))
        detector.model_.load_model(Path(folder) / state["model_file"])
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
            tree_method="hist",
            n_jobs=1,
            missing=np.nan,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def read_json(path: str | Path) -> dict:
    """Read a JSON file written by trainmap."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
