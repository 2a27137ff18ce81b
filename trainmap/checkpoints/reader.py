"""Read checkpoint tensors lazily, one tensor at a time.

Only safetensors files are opened here: the format contains raw tensors and a JSON
header, so reading it never executes code from the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from trainmap.checkpoints.discover import CheckpointRef

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(Exception):
    """A checkpoint whose numbers would be meaningless; extraction must stop."""


@dataclass
class CheckpointReader:
    """Tensor names of one checkpoint and a way to load each tensor on its own.

    Attributes
    ----------
    ref : CheckpointRef
        The checkpoint being read.
    files : dict of str to Path
        Safetensors file holding each tensor.
    dtypes : dict of str to str
        Stored dtype of each tensor, e.g. ``"F16"``.
    """

    ref: CheckpointRef
    files: dict[str, Path] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Return the tensor names, sorted."""
        return sorted(self.files)

    def tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, "torch.Tensor"]]:
        """Yield ``(name, tensor)`` pairs, one tensor in memory at a time.

        Floating-point tensors are upcast to float32; other dtypes are returned as
        stored. Tensors of one file are read through a single ``safe_open`` handle.
        """
        from safetensors import safe_open

        wanted = self.names() if names is None else names
        by_file: dict[Path, list[str]] = {}
        for name in wanted:
            by_file.setdefault(self.files[name], []).append(name)
        for path, file_names in by_file.items():
            with safe_open(path, framework="pt") as handle:
                for name in file_names:
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point():
                        tensor = tensor.float()
                    yield name, tensor


def open_checkpoint(ref: CheckpointRef) -> CheckpointReader:
    """Index the tensors of a checkpoint folder without loading them.

    Raises
    ------
    FileNotFoundError
        If the folder contains neither ``model.safetensors`` nor an index.
    CheckpointError
        If the index lists shard files that are missing on disk.
    """
    from safetensors import safe_open

    files = _weight_files(ref)
    reader = CheckpointReader(ref)
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                reader.files[name] = path
                reader.dtypes[name] = tensor_slice.get_dtype()
                reader.shapes[name] = tuple(tensor_slice.get_shape())
    return reader


def _weight_files(ref: CheckpointRef) -> list[Path]:
    """Return the safetensors files of ``ref``, checking an index's shards exist."""
    index = ref.path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not (ref.path / shard).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint {ref.path} is missing shard(s) {', '.join(missing)} listed "
                f"in {INDEX_FILE}; re-download that step or move it out of the run folder"
            )
        return [ref.path / shard for shard in shards]
    single = ref.path / SINGLE_FILE
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"checkpoint {ref.path} has no {SINGLE_FILE} or {INDEX_FILE}; the save was "
        "probably interrupted"
    )
