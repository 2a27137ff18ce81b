"""Loss features (family ``loss/``) from a run's ``metrics.jsonl``.

``trainmap ensemble`` logs one ``{"step", "train_loss"}`` record per optimizer step
and one ``{"step", "eval_loss"}`` record per checkpoint. Other trainers can write
the same file. For a checkpoint at step t:

- ``loss/train``: the train loss logged at step t;
- ``loss/train_mean``: the mean train loss over steps after the previous
  checkpoint up to t, a less noisy view of the same curve;
- ``loss/eval``: the held-out loss logged at step t.

Each uses records at steps <= t only. A missing value is NaN.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)

FAMILY = "loss"
FEATURES = ("loss/train", "loss/train_mean", "loss/eval")


def read_metrics(path: str | Path) -> dict[str, dict[int, float]]:
    """Read ``metrics.jsonl`` into ``{"train_loss": {step: value}, "eval_loss": {...}}``.

    Lines that are not valid JSON objects with an integer ``step`` are skipped with
    a warning naming the file and line (a killed writer can leave a partial last
    line). A missing file gives empty mappings.
    """
    path = Path(path)
    series: dict[str, dict[int, float]] = {"train_loss": {}, "eval_loss": {}}
    if not path.is_file():
        return series
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                logger.warning("skipping line %d of %s: not a JSON record with a 'step'", number, path)
                continue
            for key in series:
                if key in record and record[key] is not None:
                    series[key][step] = float(record[key])
    return series


def loss_features(series: dict[str, dict[int, float]], steps: list[int]) -> dict[int, dict[str, float]]:
    """Return the ``loss/`` features of each checkpoint step.

    Parameters
    ----------
    series : dict
        Output of :func:`read_metrics`.
    steps : list of int
        Checkpoint steps of the run, ascending.
    """
    train = series["train_loss"]
    evaluation = series["eval_loss"]
    train_steps = sorted(train)
    features = {}
    previous = -1
    for step in steps:
        window = [train[s] for s in train_steps if previous < s <= step]
        features[step] = {
            "loss/train": train.get(step, math.nan),
            "loss/train_mean": float(sum(window) / len(window)) if window else math.nan,
            "loss/eval": evaluation.get(step, math.nan),
        }
        previous = step
    return features
