"""Recognise how one checkpoint is stored and list its weight files.

A checkpoint is either a folder or a single file. Folders are recognised by the
files inside them, in this order of preference:

==========================  ==================================================
layout                      files
==========================  ==================================================
``safetensors-sharded``     ``model.safetensors.index.json`` and its shards
``safetensors``             ``model.safetensors``
``pytorch-bin-sharded``     ``pytorch_model.bin.index.json`` and its shards
``pytorch-bin``             ``pytorch_model.bin``
``neox-layers``             ``layer_XX-model_00-model_states.pt`` (GPT-NeoX library)
``deepspeed``               ``mp_rank_00_model_states.pt`` or, for ZeRO-3,
                            ``zero_pp_rank_0_mp_rank_00_model_states.pt``
==========================  ==================================================

A folder without any of these but with one ``global_step<N>`` sub-folder (the
Hugging Face Trainer running DeepSpeed) is read through that sub-folder. A single
file is ``safetensors-file`` (``.safetensors``) or ``torch-file`` (``.pt``,
``.pth``, ``.bin``, ``.ckpt``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from trainmap.checkpoints.errors import CheckpointError, UnsupportedLayoutError

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
DEEPSPEED_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
NEOX_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
DEEPSPEED_RANK_FILE = re.compile(r"^(?:zero_pp_rank_\d+_)?mp_rank_(\d+)_model_states\.pt$")
GLOBAL_STEP_FOLDER = re.compile(r"^global_step(\d+)$")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)


@dataclass(frozen=True)
class Layout:
    """Storage layout of one checkpoint.

    Attributes
    ----------
    kind : str
        One of the layout names in the module docstring.
    path : Path
        The checkpoint folder or file the layout was found in.
    files : tuple of Path
        Weight files, in reading order. For sharded layouts these are the shards
        the index lists, for ``neox-layers`` the layer files by layer index.
    index : Path or None
        The index file of a sharded layout.
    """

    kind: str
    path: Path
    files: tuple[Path, ...]
    index: Path | None = None

    @property
    def is_torch(self) -> bool:
        """True when the files are read with ``torch.load``."""
        return self.kind not in ("safetensors", "safetensors-sharded", "safetensors-file")


def has_weights(path: Path) -> bool:
    """Return True when ``path`` contains a weight file or an index of one.

    This looks at file names only. A killed save leaves a folder for which this is
    False, and such a checkpoint is flagged incomplete rather than read.
    """
    return _find(Path(path)) is not None


def detect_layout(path: str | Path) -> Layout:
    """Recognise the layout of a checkpoint folder or file and list its weight files.

    Raises
    ------
    FileNotFoundError
        If ``path`` has no weight files (an interrupted save).
    CheckpointError
        If an index lists shard files that are missing on disk.
    UnsupportedLayoutError
        If the weights are split over tensor-parallel ranks.
    """
    path = Path(path)
    found = _find(path)
    if found is None:
        raise FileNotFoundError(
            f"checkpoint {path} has no weight file ({SAFETENSORS_SINGLE}, {BIN_SINGLE}, their "
            "index files, DeepSpeed or GPT-NeoX model_states files); the save was probably "
            "interrupted"
        )
    kind, folder = found
    if kind in ("safetensors-sharded", "pytorch-bin-sharded"):
        index = folder / (SAFETENSORS_INDEX if kind == "safetensors-sharded" else BIN_INDEX)
        return Layout(kind, path, tuple(_indexed_shards(path, index)), index)
    if kind == "neox-layers":
        return Layout(kind, path, tuple(_neox_layer_files(folder)))
    if kind == "deepspeed":
        return Layout(kind, path, (_deepspeed_file(folder),))
    if kind in ("safetensors-file", "torch-file"):
        return Layout(kind, path, (path,))
    name = SAFETENSORS_SINGLE if kind == "safetensors" else BIN_SINGLE
    return Layout(kind, path, (folder / name,))


def is_weight_file(path: Path) -> bool:
    """True for a non-empty file whose suffix is a weight-file suffix."""
    return path.suffix in WEIGHT_SUFFIXES and _non_empty(path)


# ---------------------------------------------------------------- helpers


def _find(path: Path) -> tuple[str, Path] | None:
    """Return ``(layout kind, folder holding the files)`` or None when nothing is there."""
    if path.is_file():
        if not is_weight_file(path):
            return None
        return ("safetensors-file" if path.suffix == SAFETENSORS_SUFFIX else "torch-file"), path.parent
    if not path.is_dir():
        return None
    if (path / SAFETENSORS_INDEX).is_file():
        return "safetensors-sharded", path
    if _non_empty(path / SAFETENSORS_SINGLE):
        return "safetensors", path
    if (path / BIN_INDEX).is_file():
        return "pytorch-bin-sharded", path
    if _non_empty(path / BIN_SINGLE):
        return "pytorch-bin", path
    names = [entry.name for entry in path.iterdir() if _non_empty(entry)]
    if any(NEOX_LAYER_FILE.match(name) for name in names):
        return "neox-layers", path
    if any(DEEPSPEED_RANK_FILE.match(name) for name in names):
        return "deepspeed", path
    # The Hugging Face Trainer with DeepSpeed keeps the engine's files one level down.
    nested = sorted(entry for entry in path.iterdir() if entry.is_dir() and GLOBAL_STEP_FOLDER.match(entry.name))
    if len(nested) == 1:
        inner = _find(nested[0])
        if inner is not None and inner[0] in ("neox-layers", "deepspeed"):
            return inner
    return None


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _indexed_shards(checkpoint: Path, index: Path) -> list[Path]:
    """Return the shards an index lists, raising when any is missing on disk."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    except (ValueError, AttributeError) as error:
        raise CheckpointError(
            f"index {index} is not valid JSON with a 'weight_map' object ({error}); "
            "re-download that step or move it out of the run folder"
        ) from None
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint} is missing shard(s) {', '.join(missing)} listed in "
            f"{index.name}; re-download that step or move it out of the run folder"
        )
    return [index.parent / shard for shard in shards]


def _neox_layer_files(folder: Path) -> list[Path]:
    """Return the GPT-NeoX layer files of model-parallel rank 0, by layer index."""
    layers = []
    ranks = set()
    for entry in folder.iterdir():
        match = NEOX_LAYER_FILE.match(entry.name)
        if match and _non_empty(entry):
            ranks.add(int(match.group(2)))
            layers.append((int(match.group(1)), entry))
    if ranks != {0}:
        raise UnsupportedLayoutError(
            f"checkpoint {folder} is split over {len(ranks)} tensor-parallel ranks "
            f"(model_00 .. model_{max(ranks):02d}); merge them into one rank with the GPT-NeoX "
            "library's checkpoint tools, or convert the checkpoint to Hugging Face format first"
        )
    return [path for _, path in sorted(layers)]


def _deepspeed_file(folder: Path) -> Path:
    """Return the rank-0 DeepSpeed model-states file, rejecting tensor-parallel folders."""
    ranks = {int(match.group(1)) for entry in folder.iterdir() if (match := DEEPSPEED_RANK_FILE.match(entry.name))}
    if ranks - {0}:
        raise UnsupportedLayoutError(
            f"checkpoint {folder} is split over {len(ranks)} tensor-parallel ranks "
            f"(mp_rank_00 .. mp_rank_{max(ranks):02d}); merge them into one rank before "
            "reading it, for example by converting the checkpoint to Hugging Face format"
        )
    for name in DEEPSPEED_FILES:
        if _non_empty(folder / name):
            return folder / name
    raise FileNotFoundError(f"checkpoint {folder} has no {' or '.join(DEEPSPEED_FILES)}")
