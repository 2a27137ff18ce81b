"""Find runs and checkpoints on disk, read their tensors one at a time, check integrity."""

from trainmap.checkpoints.discover import CheckpointRef, Run, find_runs, load_run
from trainmap.checkpoints.errors import CheckpointError, UnsafeCheckpointError, UnsupportedLayoutError
from trainmap.checkpoints.integrity import RUN_FLAGS, RunIntegrity, checkpoint_digest, file_hash, find_gaps
from trainmap.checkpoints.layouts import Layout, detect_layout
from trainmap.checkpoints.reader import READER_FLAGS, CheckpointReader, open_checkpoint
from trainmap.checkpoints.torchfiles import pickles_trusted, trusted_pickles

__all__ = [
    "READER_FLAGS",
    "RUN_FLAGS",
    "CheckpointError",
    "CheckpointReader",
    "CheckpointRef",
    "Layout",
    "Run",
    "RunIntegrity",
    "UnsafeCheckpointError",
    "UnsupportedLayoutError",
    "checkpoint_digest",
    "detect_layout",
    "file_hash",
    "find_gaps",
    "find_runs",
    "load_run",
    "open_checkpoint",
    "pickles_trusted",
    "trusted_pickles",
]
