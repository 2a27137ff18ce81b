"""Errors raised while reading checkpoints."""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint whose numbers would be meaningless; extraction must stop.

    Raised for shards that an index lists but that are missing on disk, and for
    ZeRO-3 partitioned files whose parameter tensors are empty placeholders.
    """


class UnsafeCheckpointError(ValueError):
    """A torch file that cannot be loaded without running code from it.

    Attributes
    ----------
    path : Path
        The file.
    globals : list of str
        The Python globals the file needs, e.g. ``["argparse.Namespace"]``.
    """

    def __init__(self, message: str, path, globals_: list[str]):
        super().__init__(message)
        self.path = path
        self.globals = globals_


class UnsupportedLayoutError(ValueError):
    """A checkpoint stored in a layout trainmap does not read, such as tensor-parallel ranks."""
