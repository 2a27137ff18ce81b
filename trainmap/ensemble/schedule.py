"""Checkpoint schedules: which steps of a run are saved."""

from __future__ import annotations

from trainmap.steps import parse_steps


def checkpoint_schedule(total_steps: int, n_evenly_spaced: int = 10) -> list[int]:
    """Return a Pythia-like schedule: 0, 1, 2, 4, ... then evenly spaced to the end.

    Pythia saves steps 0, 1, 2, 4, ..., 512 and then every 1000 steps. Here the
    interval is ``total_steps // n_evenly_spaced`` and the powers of two run up to
    that interval, so the first checkpoints are dense where parameters move fastest.

    Parameters
    ----------
    total_steps : int
        Number of optimizer steps of the run; always the last entry.
    n_evenly_spaced : int
        Number of evenly spaced checkpoints after the log-spaced ones.

    Returns
    -------
    list of int
        Sorted, unique steps.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if n_evenly_spaced < 1:
        raise ValueError(f"n_evenly_spaced must be >= 1, got {n_evenly_spaced}")
    interval = max(1, total_steps // n_evenly_spaced)
    steps = {0}
    power = 1
    while power < interval:
        steps.add(power)
        power *= 2
    steps.update(range(interval, total_steps + 1, interval))
    steps.add(total_steps)
    return sorted(steps)


def parse_schedule(text: str, total_steps: int) -> list[int]:
    """Parse a schedule such as ``"0,1,2,4,8,50:300:50"``.

    Items are comma-separated steps or ``start:stop:step`` ranges (stop included).
    The final step ``total_steps`` is always added, because labels need the outcome.
    """
    steps = set(parse_steps(text, "checkpoint schedule", "0,1,2,4,8,50:300:50"))
    out_of_range = sorted(step for step in steps if not 0 <= step <= total_steps)
    if out_of_range:
        raise ValueError(
            f"checkpoint steps {out_of_range} are outside 0..{total_steps} "
            "(the run's --steps)"
        )
    steps.add(total_steps)
    return sorted(steps)
