"""Score a run against a trained detector: risk, map position, and the features behind it."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainmap.models.artifact import DetectorArtifact, HorizonModel
from trainmap.models.explain import aggregate
from trainmap.models.vectors import run_vectors

logger = logging.getLogger(__name__)

# A run whose nearest reference run is this many times farther than the largest
# nearest-neighbour distance within the ensemble is reported as outside it. The factor
# is a heuristic: a new seed of the test suite's micro configuration stays inside, and a
# width-96 run scored against the width-64 reference detector lands about 10,000 times
# farther.
OUTSIDE_FACTOR = 3.0
# Below this cross-validated AUROC the report notes that the risk ranks runs no better than chance.
WEAK_AUROC = 0.6


class HorizonNotReached(ValueError):
    """The run has no checkpoint at or beyond the detector's smallest horizon yet."""


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
        Outlier probability at the horizon used.
    horizon : int
        The largest horizon of the detector the run has reached.
    horizons : list of int
        Every horizon of the detector.
    reached_step : int
        The run's last checkpoint step.
    steps : list of int
        Checkpoint steps the run vector used.
    xy : list of float
        Position on the horizon's run map.
    neighbours : list of dict
        Nearest reference runs: name, label, distance.
    top_features : list of Contribution
        Columns with the largest positive contributions, largest first.
    by_family, by_module : list of dict
        Contributions summed by feature family and by module type.
    missing_steps : list of int
        Reference steps the run lacks (their columns were NaN).
    flagged_steps : list of dict
        Reference steps whose checkpoint was unreadable or incomplete: ``step``,
        ``flags`` and ``error``. Their parameter features count as the ensemble
        median; loss features from the run's logs still count.
    in_training : bool
        The run has the name of one of the detector's training runs, and that run is
        its nearest reference run.
    outside_ensemble : bool
        The nearest reference run is more than ``OUTSIDE_FACTOR`` times farther than
        any reference run is from its own nearest neighbour, as when the run comes
        from another model size or configuration.
    """

    run: str
    path: str
    risk: float
    horizon: int
    horizons: list[int]
    reached_step: int
    steps: list[int]
    xy: list[float]
    neighbours: list[dict] = field(default_factory=list)
    top_features: list[Contribution] = field(default_factory=list)
    by_family: list[dict] = field(default_factory=list)
    by_module: list[dict] = field(default_factory=list)
    missing_steps: list[int] = field(default_factory=list)
    flagged_steps: list[dict] = field(default_factory=list)
    outside_ensemble: bool = False
    in_training: bool = False
    outlier_rate: float = float("nan")
    cv_auroc: float = float("nan")
    detector_kind: str = ""

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        data = dict(self.__dict__)
        data["top_features"] = [c.__dict__ for c in self.top_features]
        return data

    def lines(self) -> list[str]:
        """Return a human-readable report, with the cautions about the risk before it."""
        out = [
            f"run {self.run} ({self.path}), checkpoints up to step {self.reached_step}",
            f"  scored at horizon step {self.horizon}, the largest of the detector's horizons "
            f"{self.horizons} that the run has reached",
            f"  checkpoints used: steps {', '.join(map(str, self.steps))}",
        ]
        if self.missing_steps:
            out.append(f"  missing checkpoints at steps {self.missing_steps} counted as the ensemble median")
        for item in self.flagged_steps:
            out.append(
                f"  checkpoint at step {item['step']} not used ({', '.join(item['flags'])}: {item['error']}); "
                "its parameter features count as the ensemble median"
            )
        if self.outside_ensemble:
            nearest = self.neighbours[0]["distance"] if self.neighbours else float("nan")
            out.append(
                f"  WARNING: the run lies far outside the detector's ensemble (nearest reference run at "
                f"distance {nearest:.3g}); it may come from another model size or configuration, "
                "so the risk below is not meaningful"
            )
        if self.in_training:
            out.append(
                f"  NOTE: {self.run} is one of the detector's training runs, so the risk below is a fit "
                "to its own label, not a prediction; the CV AUROC is the out-of-sample figure"
            )
        if self.cv_auroc < WEAK_AUROC:
            out.append(
                f"  NOTE: the detector's cross-validated AUROC at this horizon is {self.cv_auroc:.2f}, "
                f"below {WEAK_AUROC}: its risks rank runs no better than chance here"
            )
        out.append(
            f"  risk of becoming an outlier: {self.risk:.3f} "
            f"(ensemble outlier rate {self.outlier_rate:.2f}, detector CV AUROC {self.cv_auroc:.2f} at this horizon)"
        )
        out.append("  nearest ensemble runs (distance between normalised run vectors):")
        for neighbour in self.neighbours:
            out.append(f"    {neighbour['run']:<16} {neighbour['label']:<8} distance {neighbour['distance']:.2f}")
        if self.top_features:
            out.append("  features pushing the risk up most (log-odds contribution):")
            for item in self.top_features:
                out.append(
                    f"    {item.contribution:+.3f}  {item.column:<36} value {item.value:.6g} "
                    f"({item.normalised:+.2f} MADs from the ensemble median)"
                )
        else:
            out.append("  no feature pushes the risk above the ensemble's base rate")
        for title, groups in (("by family", self.by_family), ("by module type", self.by_module)):
            text = ", ".join(f"{g['name']} {g['contribution']:+.3f}" for g in groups)
            out.append(f"  contributions {title}: {text}")
        return out


def check_horizon(steps: list[int], artifact: DetectorArtifact, run_path) -> HorizonModel:
    """Return the model of the largest horizon ``steps`` reach, or raise :class:`HorizonNotReached`."""
    reached = max(steps) if steps else None
    model = None if reached is None else artifact.select(reached)
    if model is None:
        first = artifact.horizons[0]
        raise HorizonNotReached(
            f"run {run_path} has checkpoints up to step {reached}, but the detector's smallest "
            f"horizon is step {first} (horizons {artifact.horizons}); score it again once "
            f"step{first} is saved, or use a detector trained with a smaller --horizon"
        )
    return model


def score_run(run_dir: str | Path, artifact: DetectorArtifact, top: int = 10, progress: bool = True) -> ScoreResult:
    """Extract a run's checkpoints up to the usable horizon and score it.

    Raises
    ------
    HorizonNotReached
        If the run has not reached the detector's smallest horizon.
    """
    from trainmap.checkpoints import load_run
    from trainmap.features.extract import extract_runs

    run = load_run(run_dir)
    model = check_horizon(run.steps, artifact, run.path)
    table, _ = extract_runs([run], families=_families(model), max_step=model.horizon, progress=progress)
    return score_table(table, run.name, artifact, top=top, path=str(run.path), reached_step=max(run.steps))


def score_table(table: pd.DataFrame, run: str, artifact: DetectorArtifact, top: int = 10, path: str = "",
                reached_step: int | None = None) -> ScoreResult:
    """Score run ``run`` of an already extracted (or external) feature table."""
    from trainmap.map import place

    rows = table[table["run"] == run]
    if rows.empty:
        raise ValueError(f"run {run!r} is not in the feature table")
    reached = int(rows["step"].max()) if reached_step is None else reached_step
    model = check_horizon([reached], artifact, path or run)
    spec = model.spec
    early = rows[rows["step"] <= spec.horizon]
    flagged = _flagged_steps(early, spec.steps)
    flagged_steps = {item["step"] for item in flagged}
    present = set(int(s) for s in early["step"]) - flagged_steps
    missing = sorted(set(spec.steps) - present - flagged_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # reported as missing_steps
        raw = run_vectors(table, spec, [run]).to_numpy(dtype=float)
    scaled = model.scaler.transform(raw)
    risk = float(model.detector.predict_proba(scaled)[0, 1])
    contributions = model.detector.contributions(scaled)[0, :-1]
    placement = place(scaled[0], model.reference, model.coords, model.runs)
    label_of = dict(zip(model.runs, model.labels))
    groups = aggregate(spec.columns, contributions)
    return ScoreResult(
        run=run,
        path=path,
        risk=risk,
        horizon=spec.horizon,
        horizons=artifact.horizons,
        reached_step=reached,
        steps=[s for s in spec.steps if s in present],
        xy=[float(v) for v in placement.xy],
        neighbours=[
            {"run": name, "label": "outlier" if label_of[name] == 1 else "stable", "distance": distance}
            for name, distance in placement.neighbours
        ],
        top_features=_top_contributions(contributions, raw[0], scaled[0], spec.columns, top),
        by_family=groups["by_family"],
        by_module=groups["by_module"],
        missing_steps=missing,
        flagged_steps=flagged,
        outside_ensemble=_outside_ensemble(placement.neighbours, model.reference),
        in_training=bool(placement.neighbours) and placement.neighbours[0][0] == run,
        outlier_rate=float(np.mean(model.labels)),
        cv_auroc=float(model.cv.get("auroc", float("nan"))),
        detector_kind=model.detector.kind_,
    )


def _flagged_steps(rows: pd.DataFrame, steps: list[int]) -> list[dict]:
    """Return the reference steps whose checkpoint was unreadable or incomplete."""
    flagged = []
    for _, row in rows[rows["step"].isin(steps)].sort_values("step").iterrows():
        flags = [name for name in ("unreadable", "incomplete") if bool(row.get(f"flag/{name}", False))]
        if flags:
            error = row.get("flag/error")
            flagged.append({"step": int(row["step"]), "flags": [f"flag/{name}" for name in flags],
                            "error": str(error) if isinstance(error, str) and error else "no error recorded"})
    return flagged


def _outside_ensemble(neighbours: list[tuple[str, float]], reference: np.ndarray) -> bool:
    """Return whether the nearest reference run is far beyond the ensemble's own spacing."""
    if not neighbours or len(reference) < 2:
        return False
    data = np.nan_to_num(np.asarray(reference, dtype=float), nan=0.0)
    squared = (data**2).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * data @ data.T, 0.0))
    np.fill_diagonal(distances, np.inf)
    return neighbours[0][1] > OUTSIDE_FACTOR * float(distances.min(axis=1).max())


def _families(model: HorizonModel) -> tuple[str, ...]:
    """Return the feature families a horizon's run vectors need."""
    from trainmap.features.extract import ALL_FAMILIES

    needed = {str(feature).split("/", 1)[0] for feature in model.spec.features}
    unknown = sorted(needed - set(ALL_FAMILIES))
    if unknown:
        raise ValueError(
            f"the detector uses feature columns of {unknown}, which trainmap cannot extract from "
            "checkpoints (an external feature table?); score with --table instead"
        )
    return tuple(family for family in ALL_FAMILIES if family in needed)


def _top_contributions(contributions, raw, scaled, columns, top: int) -> list[Contribution]:
    """Return the ``top`` columns with the largest positive contributions."""
    order = np.argsort(-contributions, kind="stable")
    chosen = [i for i in order if contributions[i] > 0][:top]
    return [Contribution(columns[i], float(contributions[i]), float(raw[i]), float(scaled[i])) for i in chosen]
