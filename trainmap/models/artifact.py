"""The detector artifact: a folder of JSON, UBJSON, CSV and PNG files, never a pickle.

``models/NAME/`` contains

- ``detector.json``: label rule and labels, training configuration, package
  versions, and for each horizon the run-vector schema (steps, features),
  normalisation statistics, detector state and cross-validation metrics;
- ``model-step<H>.ubj``: the XGBoost booster of horizon H, in UBJSON (absent
  when that horizon's detector is a shrunken centroid, stored in detector.json);
- ``map.json``: per horizon, the training map's reference runs, their labels,
  normalised run vectors and 2-D coordinates, so new runs can be placed beside them;
- ``cv_predictions.csv``: every training run's out-of-fold risk per horizon;
- ``map.png`` and ``importance.png``: the training map and the global feature
  importance of the largest horizon.
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

FORMAT_VERSION = 2
DETECTOR_FILE = "detector.json"
MAP_FILE = "map.json"
CV_FILE = "cv_predictions.csv"
MAP_IMAGE = "map.png"
IMPORTANCE_IMAGE = "importance.png"


@dataclass
class HorizonModel:
    """The detector of one horizon and its training map.

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
    cv : dict
        Cross-validation metrics at this horizon.
    """

    spec: RunVectorSpec
    scaler: MADScaler
    detector: OutlierDetector
    runs: list[str]
    labels: np.ndarray
    reference: np.ndarray
    coords: np.ndarray
    cv: dict = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        return self.spec.horizon

    def risk(self, vectors: pd.DataFrame) -> np.ndarray:
        """Return the outlier probability of each raw (unscaled) run vector."""
        scaled = self.scaler.transform(vectors[self.spec.columns].to_numpy(dtype=float))
        return self.detector.predict_proba(scaled)[:, 1]


@dataclass
class DetectorArtifact:
    """Everything needed to score a run: one :class:`HorizonModel` per horizon.

    Attributes
    ----------
    models : list of HorizonModel
        Sorted by horizon.
    metadata : dict
        Label rule, labels, training configuration, versions, final step.
    """

    models: list[HorizonModel]
    metadata: dict = field(default_factory=dict)

    @property
    def horizons(self) -> list[int]:
        """Horizon steps, ascending."""
        return [model.horizon for model in self.models]

    @property
    def families(self) -> list[str]:
        """Feature families the run vectors use, e.g. ``["hu", "loss"]``."""
        return sorted({str(f).split("/", 1)[0] for model in self.models for f in model.spec.features})

    def select(self, reached_step: int) -> HorizonModel | None:
        """Return the model of the largest horizon at or below ``reached_step``, or None."""
        eligible = [model for model in self.models if model.horizon <= reached_step]
        return eligible[-1] if eligible else None

    def save(self, folder: str | Path) -> Path:
        """Write the artifact files into ``folder`` and return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("model-step*.ubj"):
            stale.unlink()
        horizons = []
        maps = {}
        for model in self.models:
            horizons.append({
                "horizon": model.horizon,
                "spec": model.spec.to_dict(),
                "columns": model.spec.columns,
                "scaler": {"center": model.scaler.center_.tolist(), "scale": model.scaler.scale_.tolist()},
                "detector": model.detector.save(folder, f"model-step{model.horizon}.ubj"),
                "cv": model.cv,
            })
            maps[str(model.horizon)] = {
                "runs": model.runs,
                "labels": [int(label) for label in model.labels],
                "coords": np.asarray(model.coords, dtype=float).tolist(),
                "reference": _nan_to_none(model.reference),
            }
        _write_json(folder / DETECTOR_FILE, {"format_version": FORMAT_VERSION, "horizons": horizons, **self.metadata})
        # map.json is mostly numbers; without indentation it is about half the size.
        _write_json(folder / MAP_FILE, {"horizons": maps}, indent=None)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "DetectorArtifact":
        """Read an artifact written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``folder`` lacks ``detector.json``, ``map.json`` or a booster.
        ValueError
            If the format version is not one this trainmap reads.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"detector folder {folder} not found; point --detector to a folder written by "
                "`trainmap train`, such as models/reference-w64"
            )
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
        maps = json.loads((folder / MAP_FILE).read_text(encoding="utf-8"))["horizons"]
        models = [_load_horizon(folder, entry, maps[str(entry["horizon"])]) for entry in state.pop("horizons")]
        state.pop("format_version")
        return cls(sorted(models, key=lambda model: model.horizon), state)


def _load_horizon(folder: Path, entry: dict, map_state: dict) -> HorizonModel:
    """Rebuild one horizon's model from its detector.json entry and map.json entry."""
    scaler = MADScaler()
    scaler.center_ = np.asarray(entry["scaler"]["center"], dtype=float)
    scaler.scale_ = np.asarray(entry["scaler"]["scale"], dtype=float)
    scaler.n_features_in_ = len(scaler.center_)
    reference = np.array(
        [[np.nan if value is None else value for value in row] for row in map_state["reference"]], dtype=float
    )
    return HorizonModel(
        spec=RunVectorSpec.from_dict(entry["spec"]),
        scaler=scaler,
        detector=OutlierDetector.load(folder, entry["detector"]),
        runs=list(map_state["runs"]),
        labels=np.asarray(map_state["labels"], dtype=int),
        reference=reference,
        coords=np.asarray(map_state["coords"], dtype=float),
        cv=entry.get("cv", {}),
    )


def _write_json(path: Path, record: dict, indent: int | None = 2) -> None:
    """Write JSON atomically; NaN becomes null so the file stays standard JSON."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(_clean(record), indent=indent) + "\n", encoding="utf-8")
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
    """Return the rows as lists, NaN as None, rounded to 7 significant digits.

    These vectors only place new runs among their neighbours on the map, so float32
    precision is plenty, and it keeps ``map.json`` about half the size.
    """
    return [[None if not np.isfinite(v) else float(f"{v:.7g}") for v in row]
            for row in np.asarray(matrix, dtype=float)]
