"""Module types of Hugging Face GPT-NeoX parameter names (the Pythia models).

Families that work per module type (``layers/``, ``qk/``, ``unembed/``,
``scale/``, ``dynamics/``) map names through :func:`parse_parameter_name`. Names
that do not follow this scheme map to None: buffers of old exports
(``attention.bias`` causal masks, ``masked_bias``, ``rotary_emb.inv_freq``) and
parameters of other architectures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainmap.checkpoints.jsonfile import read_json_object


# Sub-module path inside ``gpt_neox.layers.N`` -> module type.
LAYER_MODULES = {
    "attention.query_key_value": "attn_qkv",
    "attention.dense": "attn_out",
    "mlp.dense_h_to_4h": "mlp_in",
    "mlp.dense_4h_to_h": "mlp_out",
    "input_layernorm": "ln_attn",
    "post_attention_layernorm": "ln_mlp",
}
LAYER_MATRICES = ("attn_qkv", "attn_out", "mlp_in", "mlp_out")
MODEL_MATRICES = ("embed", "unembed")
NORMS = ("ln_attn", "ln_mlp", "ln_final")

_LAYER_NAME = re.compile(
    r"^gpt_neox\.layers\.(\d+)\.(" + "|".join(re.escape(path) for path in LAYER_MODULES) + r")\.(weight|bias)$"
)
_MODEL_NAMES = {
    "gpt_neox.embed_in.weight": ("embed", "weight"),
    "gpt_neox.final_layer_norm.weight": ("ln_final", "weight"),
    "gpt_neox.final_layer_norm.bias": ("ln_final", "bias"),
    "embed_out.weight": ("unembed", "weight"),
}
NOT_GPT_NEOX = (
    "no parameter follows the Hugging Face GPT-NeoX naming "
    "(gpt_neox.layers.N.attention.query_key_value.weight, embed_out.weight, ...)"
)


@dataclass(frozen=True)
class ParameterName:
    """Module type, layer index (None outside the layers) and ``weight`` or ``bias``."""

    module: str
    layer: int | None
    kind: str


def parse_parameter_name(name: str) -> ParameterName | None:
    """Return the module type of a GPT-NeoX parameter name, or None."""
    match = _LAYER_NAME.match(name)
    if match:
        return ParameterName(LAYER_MODULES[match.group(2)], int(match.group(1)), match.group(3))
    if name in _MODEL_NAMES:
        module, kind = _MODEL_NAMES[name]
        return ParameterName(module, None, kind)
    return None


def read_config(checkpoint_path: str | Path) -> dict:
    """Return the ``config.json`` beside a checkpoint as a dict ({} if absent or invalid).

    ``checkpoint_path`` is a checkpoint folder or a single weight file.
    """
    folder = Path(checkpoint_path)
    path = (folder if folder.is_dir() else folder.parent) / "config.json"
    if not path.is_file():
        return {}
    return read_json_object(path)
