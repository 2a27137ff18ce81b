"""Train small GPT-NeoX seed ensembles on a byte-level corpus (CPU-friendly)."""

from trainmap.ensemble.schedule import checkpoint_schedule, parse_schedule
from trainmap.ensemble.trainer import EnsembleConfig, train_ensemble, train_run

__all__ = [
    "EnsembleConfig",
    "checkpoint_schedule",
    "parse_schedule",
    "train_ensemble",
    "train_run",
]
