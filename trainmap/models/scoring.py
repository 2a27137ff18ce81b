"""Score a run against a trained detector: risk, map position, and the features behind it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainmap.models.artifact import DetectorArtifact
from trainmap.models.vectors import run_vectors

logger = logging.getLogger(__name__)


class HorizonNotReached(ValueError):
    """The run has no checkpoint at or beyond the detector's horizon yet."""


@dataclass
class Contribution:
    """One run-vector column's push on the outlier log-odds."""

    column: str
    contribution: float
    value: float
    normalised: float


@dataclass
class ScoreResult:
    """The outcome of scoring one run.

    Attributes
    ----------
    run : str
    risk : float
        Outlier probability at the horizon.
    horizon : int
    steps : list of int
        Checkpoint steps the run vector used.
    xy : list of float
        Position on the detector's run map.
    neighbours : list of dict
        Nearest reference runs: name, label, distance.
    top_features : list of Contribution
        Columns with the largest positive contributions, largest first.
    """

    run: str
    path: str
    risk: float
    horizon: int
    steps: list[int]
    xy: list[float]
    neighbours: list[dict] = field(default_factory=list)
    top_features: list[Contribution] = field(default_factory=list)
    outlier_rate: float = float("nan")
    cv_auroc: float = float("nan")

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        data = dict(self.__dict__)
        data["top_features"] = [c.__dict__ for c in self.top_features]
        return data

    def lines(self) -> list[str]:
        """Return a human-readable report."""
        out = [
            f"run {self.run} ({self.path}) at horizon step {self.horizon}",
            f"  checkpoints used: steps {', '.join(map(str, self.steps))}",
            f"  risk of becoming an outlier: {self.risk:.3f} "
            f"(ensemble outlier rate {self.outlier_rate:.2f}, detector CV AUROC {self.cv_auroc:.2f})",
            "  nearest ensemble runs on the map:",
        ]
        for neighbour in self.neighbours:
            out.append(f"    {neighbour['run']:<16} {neighbour['label']:<8} distance {neighbour['distance']:.2f}")
        if self.top_features:
            out.append("  features pushing the risk up most (log-odds contribution):")
            for item in self.top_features:
                out.append(
                    f"    {item.contribution:+.3f}  {item.column:<32} value {item.value:.6g} "
                    f"({item.normalised:+.2f} MADs from the ensemble median)"
                )
        else:
            out.append("  no feature pushes the risk above the detector's base rate")
        return out


def check_horizon(steps: list[int], horizon: int, run_path) -> None:
    """Raise :class:`HorizonNotReached` when no step reaches ``horizon``."""
    reached = max(steps) if steps else None
    if reached is None or reached < horizon:
        raise HorizonNotReached(
            f"run {run_path} has checkpoints up to step {reached}, but the detector's "
            f"horizon is step {horizon}; score it again once step{horizon} is saved, or "
            "use a detector trained with a smaller --horizon"
        )


def score_run(run_dir: str | Path, artifact: DetectorArtifact, top: int = 10, progress: bool = True) -> ScoreResult:
    """Extract a run's checkpoints up to the horizon and score it.

    Raises
    ------
    HorizonNotReached
        If the run has not reached the horizon.
    """
    from trainmap.checkpoints import load_run
    from trainmap.features.extract import extract_runs, resolve_families

    run = load_run(run_dir)
    horizon = artifact.spec.horizon
    check_horizon(run.steps, horizon, run.path)
    families = resolve_families([f for f in artifact.families if f in ("hu", "loss")])
    table, _ = extract_runs([run], families=families, max_step=horizon, progress=progress)
    return score_table(table, run.name, artifact, top=top, path=str(run.path))


def score_table(table: pd.DataFrame, run: str, artifact: DetectorArtifact, top: int = 10, path: str = "") -> ScoreResult:
    """Score run ``run`` of an already extracted feature table."""
    from trainmap.map import place

    spec = artifact.spec
    steps = sorted(int(s) for s in table.loc[(table["run"] == run) & (table["step"] <= spec.horizon), "step"])
    check_horizon(steps, spec.horizon, path or run)
    vectors = run_vectors(table, spec, [run])
    raw = vectors.to_numpy(dtype=float)
    scaled = artifact.scaler.transform(raw)
    risk = float(artifact.detector.predict_proba(scaled)[0, 1])
    contributions = artifact.detector.contributions(scaled)[0, :-1]
    placement = place(scaled[0], artifact.reference, artifact.coords, artifact.runs)
    label_of = dict(zip(artifact.runs, artifact.labels))
    cv = artifact.metadata.get("cv", {})
    return ScoreResult(
        run=run,
        path=path,
        risk=risk,
        horizon=spec.horizon,
        steps=[s for s in steps if s in set(spec.steps)],
        xy=[float(v) for v in placement.xy],
        neighbours=[
            {"run": name, "label": "outlier" if label_of[name] == 1 else "stable", "distance": distance}
            for name, distance in placement.neighbours
        ],
        top_features=_top_contributions(contributions, raw[0], scaled[0], spec.columns, top),
        outlier_rate=float(np.mean(artifact.labels)),
        cv_auroc=float(cv.get("auroc", float("nan"))),
    )


def _top_contributions(contributions, raw, scaled, columns, top: int) -> list[Contribution]:
    """Return the ``top`` columns with the largest positive contributions."""
    order = np.argsort(-contributions, kind="stable")
    chosen = [i for i in order if contributions[i] > 0][:top]
    return [Contribution(columns[i], float(contributions[i]), float(raw[i]), float(scaled[i])) for i in chosen]
