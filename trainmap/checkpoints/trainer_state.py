"""Read the step and loss history a Hugging Face Trainer stores with each checkpoint.

``checkpoint-<N>/trainer_state.json`` contains ``global_step`` and ``log_history``,
a list of records such as ``{"step": 10, "loss": 2.31, "learning_rate": ...}``
and ``{"step": 100, "eval_loss": 2.05, ...}``. The last record of a finished
run has ``train_loss``, the mean over the whole run, which is not a per-step
loss and is ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

from trainmap.checkpoints.jsonfile import read_json_object


TRAINER_STATE = "trainer_state.json"
# trainer_state.json key -> trainmap loss series name
LOSS_KEYS = {"loss": "train_loss", "eval_loss": "eval_loss"}


def read_global_step(path: str | Path) -> int | None:
    """Return ``global_step`` from a ``trainer_state.json``, or None when absent or invalid."""
    state = read_json_object(Path(path))
    step = state.get("global_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def read_losses(path: str | Path) -> dict[str, dict[int, float]]:
    """Return ``{"train_loss": {step: value}, "eval_loss": {step: value}}`` from ``log_history``."""
    series: dict[str, dict[int, float]] = {name: {} for name in LOSS_KEYS.values()}
    history = read_json_object(Path(path)).get("log_history", [])
    for record in history if isinstance(history, list) else []:
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        for key, name in LOSS_KEYS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series[name][record["step"]] = float(value) if math.isfinite(value) else math.nan
    return series
