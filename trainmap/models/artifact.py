"""The detector artifact: a folder of JSON, UBJSON and CSV files, never a pickle.

``models/NAME/`` contains

- ``detector.json``: run-vector schema (horizon, steps, features), normalisation
  statistics, label rule and labels, cross-validation metrics, detector
  parameters, package versions;
- ``model.ubj``: the XGBoost booster in UBJSON;
- ``map.json``: the training map's reference runs, their labels, normalised run
  vectors and 2-D coordinates, so new runs can be placed beside them;
- ``cv_predictions.csv``: every training run's out-of-fold risk;
- ``map.png``: the training map image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainmap.models.detector import OutlierDetector
from trainmap.models.vectors import MADScaler, RunVectorSpec

FORMAT_VERSION = 1
DETECTOR_FILE = "detector.json"
MAP_FILE = "map.json"
CV_FILE = "cv_predictions.csv"
MAP_IMAGE = "map.png"


@dataclass
class DetectorArtifact:
    """Everything needed to score a run: schema, scaler, detector and map.

    Attributes
    ----------
    spec : RunVectorSpec
    scaler : MADScaler
    detector : OutlierDetector
    runs : list of str
        Reference (training) runs.
    labels : ndarray of shape (n_runs,)
        Their labels, 1 outlier and 0 stable.
    reference : ndarray of shape (n_runs, n_columns)
        Their normalised run vectors.
    coords : ndarray of shape (n_runs, 2)
        Their positions on the run map.
    metadata : dict
        Label rule, CV metrics, versions, configuration.
    """

    spec: RunVectorSpec
    scaler: MADScaler
    detector: OutlierDetector
    runs: list[str]
    labels: np.ndarray
    reference: np.ndarray
    coords: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def families(self) -> list[str]:
        """Feature families the run vectors use, e.g. ``["hu", "loss"]``."""
        return sorted({feature.split("/", 1)[0] for feature in self.spec.features})

    def save(self, folder: str | Path) -> Path:
        """Write the artifact files into ``folder`` and return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "columns": self.spec.columns,
            "scaler": {"center": self.scaler.center_.tolist(), "scale": self.scaler.scale_.tolist()},
            "detector": self.detector.save(folder),
            **self.metadata,
        }
        _write_json(folder / DETECTOR_FILE, state)
        _write_json(folder / MAP_FILE, {
            "runs": self.runs,
            "labels": [int(label) for label in self.labels],
            "coords": np.asarray(self.coords, dtype=float).tolist(),
            "reference": _nan_to_none(self.reference),
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "DetectorArtifact":
        """Read an artifact written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``folder`` lacks ``detector.json``, ``map.json`` or the booster.
        ValueError
            If the format version is not one this trainmap reads.
        """
        folder = Path(folder)
        for name in (DETECTOR_FILE, MAP_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"detector folder {folder} has no {name}; point --detector to a "
                    "folder written by `trainmap train`"
                )
        state = json.loads((folder / DETECTOR_FILE).read_text(encoding="utf-8"))
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / DETECTOR_FILE} has format version {state.get('format_version')}, "
                f"this trainmap reads version {FORMAT_VERSION}; retrain with `trainmap train`"
            )
        spec = RunVectorSpec.from_dict(state.pop("spec"))
        scaler_state = state.pop("scaler")
        scaler = MADScaler()
        scaler.center_ = np.asarray(scaler_state["center"], dtype=float)
        scaler.scale_ = np.asarray(scaler_state["scale"], dtype=float)
        scaler.n_features_in_ = len(scaler.center_)
        detector = OutlierDetector.load(folder, state.pop("detector"))
        state.pop("columns", None)
        state.pop("format_version", None)
        map_state = json.loads((folder / MAP_FILE).read_text(encoding="utf-8"))
        reference = np.array(
            [[np.nan if value is None else value for value in row] for row in map_state["reference"]],
            dtype=float,
        )
        return cls(
            spec=spec,
            scaler=scaler,
            detector=detector,
            runs=list(map_state["runs"]),
            labels=np.asarray(map_state["labels"], dtype=int),
            reference=reference,
            coords=np.asarray(map_state["coords"], dtype=float),
            metadata=state,
        )

    def risk(self, vectors: pd.DataFrame) -> np.ndarray:
        """Return the outlier probability of each raw (unscaled) run vector."""
        scaled = self.scaler.transform(vectors[self.spec.columns].to_numpy(dtype=float))
        return self.detector.predict_proba(scaled)[:, 1]


def _write_json(path: Path, record: dict) -> None:
    """Write JSON atomically; NaN becomes null so the file stays standard JSON."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(_clean(record), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _clean(value):
    """Recursively replace NaN and infinities by None and numpy scalars by Python ones."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _nan_to_none(matrix: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(matrix, dtype=float)]
