"""Outlier labels: which runs of an ensemble ended up outliers, and why.

Three rules can be combined; a run is an outlier when any enabled rule fires.

- **Final metric.** The run's outcome, ``loss/eval`` at its final checkpoint, is
  compared with the ensemble by the modified z-score of Iglewicz and Hoaglin (1993),
  ``z = 0.6745 * (x - median(x)) / MAD(x)``, where MAD is the median absolute
  deviation across runs. The run is an outlier when ``z > threshold`` (a worse loss
  than its seeds). The factor 0.6745 makes z comparable to a standard normal score.
- **Divergence.** A non-finite final loss, or non-finite values in any checkpoint
  (``flag/nonfinite > 0`` in the feature table).
- **Unrecovered loss spike.** The train loss, smoothed by a trailing mean over
  ``spike_window`` steps, rises more than ``spike_rise`` above its running minimum.
  The spike has recovered once the smoothed loss falls back within
  ``spike_tolerance`` of the minimum it rose from; the steps that took are recorded
  as the recovery time. A spike still unrecovered at the last step makes the run an
  outlier. Recovered spikes are reported but do not label the run.
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
    """Rule that turns each run's outcome into an outlier label.

    Attributes
    ----------
    metric : str
        Column holding the outcome; read at each run's final step.
    threshold : float or None
        Modified z-score above which a run is an outlier (3.5 is the cut-off
        Iglewicz and Hoaglin recommend). None disables the rule.
    divergence : bool
        Label runs with a non-finite final loss or non-finite weights as outliers.
    spike_rise : float or None
        Rise of the smoothed train loss above its running minimum, in nats, that
        counts as a spike. None disables the spike rule.
    spike_window : int
        Trailing-mean window of the smoothed train loss, in steps (in checkpoints
        when only a feature table's ``loss/train`` is available).
    spike_tolerance : float or None
        Distance above the pre-spike minimum that counts as recovered; None uses
        half of ``spike_rise``.
    """

    metric: str = "loss/eval"
    threshold: float | None = 3.5
    divergence: bool = True
    spike_rise: float | None = None
    spike_window: int = 10
    spike_tolerance: float | None = None

    def describe(self) -> str:
        """Return the enabled rules as one sentence, for printing and logging."""
        parts = []
        if self.threshold is not None:
            parts.append(
                f"the final {self.metric} has a modified z-score 0.6745*(x - median)/MAD "
                f"> {self.threshold:g} across the ensemble"
            )
        if self.divergence:
            parts.append(f"the final {self.metric} or any weight is not finite")
        if self.spike_rise is not None:
            parts.append(
                f"the train loss (trailing mean over {self.spike_window}) rises more than "
                f"{self.spike_rise:g} above its running minimum and has not come back within "
                f"{self.tolerance():g} of it by the last step"
            )
        if not parts:
            return "no rule enabled: every run is stable"
        return "outlier if " + ", or ".join(parts)

    def tolerance(self) -> float:
        """Return the recovery tolerance, defaulting to half the spike rise."""
        if self.spike_tolerance is not None:
            return self.spike_tolerance
        return (self.spike_rise or 0.0) / 2

    def to_dict(self) -> dict:
        """Return the rule as a JSON-ready dict, with its description."""
        return {"rule": "composite", **asdict(self), "description": self.describe()}


@dataclass
class Spike:
    """The largest loss spike of a run, found by :func:`find_spike`.

    Attributes
    ----------
    step : int
        Step at which the smoothed loss first exceeded the running minimum by the rise.
    height : float
        Largest excess of the smoothed loss over the pre-spike minimum.
    recovered_step : int or None
        First step back within the tolerance; None when it never came back.
    """

    step: int
    height: float
    recovered_step: int | None

    @property
    def recovery_steps(self) -> float:
        """Steps from the spike to its recovery; NaN when it never recovered."""
        return math.nan if self.recovered_step is None else float(self.recovered_step - self.step)


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


def find_spike(curve: dict[int, float], rise: float, window: int, tolerance: float) -> Spike | None:
    """Return the spike of a loss curve with the largest height, or None.

    Parameters
    ----------
    curve : dict
        Step to loss. Non-finite values end the search: that is divergence, a
        separate rule.
    rise : float
        Excess over the running minimum of the smoothed loss that starts a spike.
    window : int
        Trailing-mean window, in entries of ``curve``.
    tolerance : float
        Excess below which a spike counts as recovered.
    """
    steps = sorted(curve)
    values = np.array([curve[step] for step in steps], dtype=float)
    finite = np.isfinite(values)
    if not finite.all():
        cut = int(np.argmin(finite))
        steps, values = steps[:cut], values[:cut]
    if len(values) == 0:
        return None
    smoothed = pd.Series(values).rolling(max(1, window), min_periods=1).mean().to_numpy()
    best: Spike | None = None
    running_min = math.inf
    index = 0
    while index < len(smoothed):
        value = smoothed[index]
        if value - running_min > rise:
            spike, index = _follow_spike(steps, smoothed, index, running_min, tolerance)
            if best is None or spike.height > best.height:
                best = spike
            continue
        running_min = min(running_min, value)
        index += 1
    return best


def label_runs(
    table: pd.DataFrame, rule: LabelRule | None = None, curves: dict[str, dict[int, float]] | None = None
) -> pd.DataFrame:
    """Label each run of a feature table by its outcome.

    Runs whose last step is below the ensemble's final step have not finished, so
    their outcome is unknown: they get no label (NaN) and a reason.

    Parameters
    ----------
    table : pandas.DataFrame
        Feature table with ``run``, ``step`` and the rule's metric column; the
        spike rule also reads ``loss/train`` and the divergence rule
        ``flag/nonfinite`` when present.
    rule : LabelRule, optional
        Defaults to ``LabelRule()``.
    curves : dict, optional
        Per-step train loss of each run (``{run: {step: loss}}``, as read from
        ``metrics.jsonl``); the spike rule prefers it to the checkpoint-level
        ``loss/train`` column.

    Returns
    -------
    pandas.DataFrame
        One row per run, in natural run order: ``run``, ``label`` (1 outlier,
        0 stable, NaN unknown), ``final_step``, ``outcome``, ``z``, ``diverged``,
        ``spike_step``, ``spike_height``, ``recovery_steps`` and ``reason``.

    Raises
    ------
    ValueError
        If the metric column is missing.
    """
    rule = rule or LabelRule()
    if rule.metric not in table.columns:
        raise ValueError(
            f"the table has no column {rule.metric!r} to label runs by; extract with the "
            "loss family (runs need metrics.jsonl), name the outcome column with "
            "--label-metric, or pass labels as a CSV with --labels"
        )
    ordered = table.sort_values(["run", "step"], kind="stable")
    final = ordered.groupby("run", sort=False).tail(1).set_index("run")
    last_step = int(final["step"].max())
    finished = final["step"] == last_step
    outcome = final[rule.metric].astype(float)
    z = pd.Series(np.nan, index=final.index)
    z[finished] = robust_z(outcome[finished].to_numpy())
    nonfinite_weights = _nonfinite_weights(ordered)

    rows = []
    for run in sorted(final.index, key=natural_key):
        spike = _run_spike(run, ordered, curves, rule)
        rows.append(_label_one(run, int(final.at[run, "step"]), last_step, outcome[run], z[run],
                               bool(nonfinite_weights.get(run, False)), spike, rule))
    return pd.DataFrame(rows)


def label_lines(frame: pd.DataFrame, indent: str = "") -> list[str]:
    """Return one printable line per run: name, OUTLIER, stable or unlabelled, and the reason."""
    width = max([len(str(run)) for run in frame["run"]] + [8])
    lines = []
    for _, row in frame.iterrows():
        tag = {1.0: "OUTLIER", 0.0: "stable"}.get(row["label"], "unlabelled")
        lines.append(f"{indent}{row['run']:<{width}} {tag:<10} {row['reason']}")
    return lines


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


def natural_key(name: str) -> list:
    """Sort key that orders ``seed2`` before ``seed10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _follow_spike(steps, smoothed, start: int, base: float, tolerance: float) -> tuple[Spike, int]:
    """Follow a spike from ``start`` until it recovers; return it and the next index."""
    height = smoothed[start] - base
    for index in range(start + 1, len(smoothed)):
        height = max(height, smoothed[index] - base)
        if smoothed[index] - base <= tolerance:
            return Spike(steps[start], float(height), steps[index]), index
    return Spike(steps[start], float(height), None), len(smoothed)


def _run_spike(run: str, ordered: pd.DataFrame, curves, rule: LabelRule) -> Spike | None:
    """Return the largest spike of one run, or None when the rule is off or no curve exists."""
    if rule.spike_rise is None:
        return None
    curve = (curves or {}).get(run)
    if curve is None and "loss/train" in ordered.columns:
        # Step 0 has no train loss yet: the first one is logged with step 1.
        rows = ordered[(ordered["run"] == run) & (ordered["step"] > 0)]
        curve = dict(zip(rows["step"].astype(int), rows["loss/train"].astype(float)))
    if not curve:
        return None
    return find_spike(curve, rule.spike_rise, rule.spike_window, rule.tolerance())


def _nonfinite_weights(ordered: pd.DataFrame) -> dict[str, bool]:
    """Return, per run, whether any checkpoint had non-finite values."""
    if "flag/nonfinite" not in ordered.columns:
        return {}
    return (ordered.groupby("run")["flag/nonfinite"].max() > 0).to_dict()


def _label_one(run, step, last_step, value, z, nonfinite_weights, spike: Spike | None, rule: LabelRule) -> dict:
    """Return one row of :func:`label_runs`."""
    row = {
        "run": run, "final_step": step, "outcome": value, "z": z,
        "diverged": (not math.isfinite(value)) or nonfinite_weights,
        "spike_step": math.nan if spike is None else spike.step,
        "spike_height": math.nan if spike is None else spike.height,
        "recovery_steps": math.nan if spike is None else spike.recovery_steps,
    }
    if step < last_step:
        row.update(label=math.nan, reason=f"unfinished: last step {step} < ensemble's final step {last_step}")
        return row
    reasons = []
    if rule.divergence and not math.isfinite(value):
        reasons.append(f"non-finite {rule.metric} at step {step} (diverged)")
    if rule.divergence and nonfinite_weights:
        reasons.append("non-finite weights in a checkpoint (diverged)")
    if rule.threshold is not None and math.isfinite(value) and z > rule.threshold:
        reasons.append(f"{rule.metric} {value:.4f} has z = {z:.2f} > {rule.threshold:g}")
    if spike is not None and spike.recovered_step is None:
        reasons.append(f"loss spike at step {spike.step} (+{spike.height:.2f}) never recovered")
    if reasons:
        row.update(label=1.0, reason="; ".join(reasons))
        return row
    notes = []
    if math.isfinite(value) and rule.threshold is not None:
        notes.append(f"{rule.metric} {value:.4f} has z = {z:.2f} <= {rule.threshold:g}")
    if spike is not None:
        notes.append(f"spike at step {spike.step} (+{spike.height:.2f}) recovered after "
                     f"{spike.recovery_steps:.0f} steps")
    row.update(label=0.0, reason="; ".join(notes) or "no rule fired")
    return row
