"""Outlier labels, run vectors, the detector, and its training and scoring."""

from trainmap.models.artifact import DetectorArtifact
from trainmap.models.detector import OutlierDetector
from trainmap.models.labels import LabelRule, label_runs, read_labels, robust_z
from trainmap.models.vectors import MADScaler, RunVectorSpec, make_spec, run_vectors

__all__ = [
    "DetectorArtifact",
    "LabelRule",
    "MADScaler",
    "OutlierDetector",
    "RunVectorSpec",
    "label_runs",
    "make_spec",
    "read_labels",
    "robust_z",
    "run_vectors",
]
