"""Outlier labels: which runs of an ensemble ended up outliers, and why.

The default rule compares each run's outcome, the value of ``loss/eval`` at its
final checkpoint, with the ensemble by the modified z-score of Iglewicz and
Hoaglin (1993)::

    z = 0.6745 * (x - median(x)) / MAD(x)

where MAD is the median absolute deviation across runs. A run is an outlier when
``z > threshold`` (a worse loss than its seeds) or when its loss is not finite
(divergence). The factor 0.6745 makes z comparable to a standard normal score.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

MAD_TO_SIGMA = 0.6745


@dataclass
class LabelRule:
    """Rule that turns a run's outcome into an outlier label.

    Attributes
    ----------
    metric : str
        Feature-table column holding the outcome; read at each run's final step.
    threshold : float
        Modified z-score above which a run is an outlier. 3.5 is the cut-off
        Iglewicz and Hoaglin recommend.
    """

    metric: str = "loss/eval"
    threshold: float = 3.5

    def describe(self) -> str:
        """Return the rule as one sentence, for printing and logging."""
        return (
            f"outlier if the final {self.metric} has a modified z-score "
            f"0.6745*(x - median)/MAD > {self.threshold:g} across the ensemble, "
            f"or is not finite"
        )

    def to_dict(self) -> dict:
        """Return the rule as a JSON-ready dict, with its description."""
        return {"rule": "final_metric_robust_z", **asdict(self), "description": self.describe()}


def robust_z(values: np.ndarray) -> np.ndarray:
    """Return modified z-scores of ``values`` against their own median and MAD.

    Non-finite values get NaN and do not enter the median or the MAD. When the
    MAD is 0 (more than half the runs share one value), the mean absolute
    deviation times 1.2533 replaces it, as Iglewicz and Hoaglin suggest. When that
    is 0 too, every score is 0.
    """
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    scores = np.full(values.shape, np.nan)
    if not finite.any():
        return scores
    center = np.median(values[finite])
    deviations = np.abs(values[finite] - center)
    mad = np.median(deviations)
    if mad > 0:
        scores[finite] = MAD_TO_SIGMA * (values[finite] - center) / mad
        return scores
    mean_deviation = deviations.mean()
    if mean_deviation > 0:
        scores[finite] = (values[finite] - center) / (1.2533 * mean_deviation)
    else:
        scores[finite] = 0.0
    return scores


def label_runs(table: pd.DataFrame, rule: LabelRule | None = None) -> pd.DataFrame:
    """Label each run of a feature table by its final outcome.

    Runs whose last step is below the ensemble's final step have not finished, so
    their outcome is unknown: they get no label (NaN) and a reason.

    Parameters
    ----------
    table : pandas.DataFrame
        Feature table with ``run``, ``step`` and the rule's metric column.
    rule : LabelRule, optional
        Defaults to ``LabelRule()``.

    Returns
    -------
    pandas.DataFrame
        Columns ``run``, ``label`` (1 outlier, 0 stable, NaN unknown),
        ``final_step``, ``outcome``, ``z`` and ``reason``; one row per run.

    Raises
    ------
    ValueError
        If the metric column is missing.
    """
    rule = rule or LabelRule()
    if rule.metric not in table.columns:
        raise ValueError(
            f"the feature table has no column {rule.metric!r} to label runs by; "
            "extract with the loss family (runs need metrics.jsonl) or pass labels "
            "as a CSV with --labels"
        )
    final = table.sort_values("step").groupby("run", sort=True).tail(1).set_index("run")
    last_step = int(final["step"].max())
    finished = final["step"] == last_step
    outcome = final[rule.metric].astype(float)
    z = pd.Series(np.nan, index=final.index)
    z[finished] = robust_z(outcome[finished].to_numpy())

    rows = []
    for run in sorted(final.index, key=natural_key):
        rows.append(_label_one(run, int(final.at[run, "step"]), last_step, outcome[run], z[run], rule))
    return pd.DataFrame(rows)


def natural_key(name: str) -> list:
    """Sort key that orders ``seed2`` before ``seed10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read labels from a CSV with columns ``run`` and ``label``.

    ``label`` accepts 1/0, true/false, yes/no and outlier/stable (any case).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a column is missing or a label is not one of the accepted values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    frame = pd.read_csv(path, dtype={"run": str})
    missing = {"run", "label"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"labels file {path} lacks column(s) {', '.join(sorted(missing))}; "
            "expected a CSV with header 'run,label'"
        )
    mapping = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0,
               "outlier": 1, "stable": 0, "1.0": 1, "0.0": 0}
    text = frame["label"].astype(str).str.strip().str.lower()
    invalid = sorted(set(text[~text.isin(mapping)]))
    if invalid:
        raise ValueError(
            f"labels file {path} has invalid label(s) {invalid}; use 1/0, "
            "true/false or outlier/stable"
        )
    return pd.DataFrame({
        "run": frame["run"].astype(str),
        "label": text.map(mapping).astype(float),
        "reason": f"given in {path.name}",
    })


def _label_one(run, step, last_step, value, z, rule: LabelRule) -> dict:
    """Return one row of :func:`label_runs`."""
    row = {"run": run, "final_step": step, "outcome": value, "z": z}
    if step < last_step:
        row.update(label=math.nan, reason=f"unfinished: last step {step} < ensemble's final step {last_step}")
    elif not math.isfinite(value):
        row.update(label=1.0, reason=f"non-finite {rule.metric} at step {step} (diverged)")
    elif z > rule.threshold:
        row.update(label=1.0, reason=f"{rule.metric} {value:.4f} has z = {z:.2f} > {rule.threshold:g}")
    else:
        row.update(label=0.0, reason=f"{rule.metric} {value:.4f} has z = {z:.2f} <= {rule.threshold:g}")
    return row
