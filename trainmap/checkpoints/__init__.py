"""Find runs and checkpoints on disk and read their tensors one at a time."""

from trainmap.checkpoints.discover import CheckpointRef, Run, find_runs, load_run
from trainmap.checkpoints.reader import CheckpointError, CheckpointReader, open_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointReader",
    "CheckpointRef",
    "Run",
    "find_runs",
    "load_run",
    "open_checkpoint",
]
