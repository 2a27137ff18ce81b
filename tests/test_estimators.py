"""scikit-learn's own estimator checks over trainmap's estimators."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from trainmap.models.detector import OutlierDetector
from trainmap.models.vectors import MADScaler


@parametrize_with_checks([OutlierDetector(n_estimators=20), MADScaler()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
