"""Map GPT-NeoX library layer files to Hugging Face GPT-NeoX parameter names.

The GPT-NeoX library (with DeepSpeed pipeline parallelism) saves one file per
pipeline layer, ``layer_XX-model_00-model_states.pt``. Layer 0 is the embedding
(``word_embeddings.weight``), layer 1 a function without parameters, layers
2 .. L+1 the L transformer blocks, layer L+2 another function, layer L+3 the final
norm (``norm.*``) and layer L+4 the output projection (``final_linear.weight``).
Block ``i`` is therefore file ``layer_{i + 2}`` when the embedding is layer 0.
RMSNorm layers store their gain as ``scale``; it is renamed to ``weight``, the
Hugging Face name.

Files are classified by their keys, not by position, so a model whose
embedding sits at another index still maps correctly.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainmap.checkpoints.errors import CheckpointError
from trainmap.checkpoints.layouts import NEOX_LAYER_FILE

# Layers between the embedding and the first block that hold no parameters.
BLOCK_OFFSET_AFTER_EMBEDDING = 2
EMBEDDING_KEY = "word_embeddings.weight"
OUTPUT_KEY = "final_linear.weight"


def map_layer_keys(keys_by_file: dict[Path, list[str]], checkpoint: Path) -> dict[Path, dict[str, str]]:
    """Return ``{file: {key in file: Hugging Face name}}`` for the layer files.

    Parameters
    ----------
    keys_by_file : dict of Path to list of str
        The tensor keys of every ``layer_XX-model_00-model_states.pt`` file.
    checkpoint : Path
        The checkpoint folder, for error messages.

    Raises
    ------
    CheckpointError
        If block files are missing between the first and the last block, or
        between the embedding and the first block.
    """
    indexed = sorted((_layer_index(path), path) for path in keys_by_file)
    embedding = [index for index, path in indexed if EMBEDDING_KEY in keys_by_file[path]]
    blocks = [index for index, path in indexed if any(key.startswith("attention.") for key in keys_by_file[path])]
    if embedding:
        first_block = embedding[0] + BLOCK_OFFSET_AFTER_EMBEDDING
    elif blocks:
        first_block = blocks[0]
    else:
        first_block = 0
    _check_contiguous(blocks, first_block, checkpoint)

    mapping: dict[Path, dict[str, str]] = {}
    for index, path in indexed:
        keys = keys_by_file[path]
        if index in blocks:
            prefix = f"gpt_neox.layers.{index - first_block}."
            mapping[path] = {key: prefix + _norm_weight(key) for key in keys}
        else:
            mapping[path] = {key: _outer_name(key, index) for key in keys}
    return mapping


def _layer_index(path: Path) -> int:
    match = NEOX_LAYER_FILE.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a GPT-NeoX layer file (layer_XX-model_00-model_states.pt)")
    return int(match.group(1))


def _check_contiguous(blocks: list[int], first_block: int, checkpoint: Path) -> None:
    if not blocks:
        return
    expected = range(first_block, blocks[-1] + 1)
    missing = [index for index in expected if index not in set(blocks)]
    if missing:
        names = ", ".join(f"layer_{index:02d}-model_00-model_states.pt" for index in missing)
        raise CheckpointError(
            f"checkpoint {checkpoint} is missing GPT-NeoX block file(s) {names}; "
            "re-copy that step or move it out of the run folder"
        )


def _norm_weight(key: str) -> str:
    """Rename an RMSNorm ``scale`` to ``weight``; other keys are unchanged."""
    return re.sub(r"(norm)\.scale$", r"\1.weight", key)


def _outer_name(key: str, index: int) -> str:
    """Name a parameter outside the blocks: embedding, final norm, output layer."""
    if key == EMBEDDING_KEY:
        return "gpt_neox.embed_in.weight"
    if key == OUTPUT_KEY:
        return "embed_out.weight"
    if key.startswith("norm."):
        return "gpt_neox.final_layer_norm." + _norm_weight(key)[len("norm."):]
    # NOTE: parameters of other layer types have no Hugging Face GPT-NeoX name, so
    # they keep their key under a prefix naming the pipeline layer.
    return f"gpt_neox.pipe_layer_{index:02d}.{key}"
