"""Output-logit drift proxies from the unembedding (family ``unembed/``).

The unembedding U (``embed_out.weight``, vocabulary x hidden) maps the final
hidden state to logits, one row per token. Growing row norms let logits, and the
softmax, saturate. Features, with r_v = ||U_v|| the Euclidean norm of row v:

- ``unembed/row_norm_mean``, ``unembed/row_norm_std`` (n - 1), ``unembed/row_norm_max``;
- ``unembed/mean_row_norm``: ||mean_v U_v||, the part of every logit vector
  shared by all tokens' rows;
- ``unembed/final_ln_gain_mean``, ``unembed/final_ln_gain_max_abs``: the gain of
  ``gpt_neox.final_layer_norm``, which scales the hidden state before U.
"""

from __future__ import annotations

import math

import torch

from trainmap.features.family import CheckpointContext, SinglePassFamily
from trainmap.features.gpt_neox import NOT_GPT_NEOX, parse_parameter_name

FAMILY = "unembed"
FEATURES = (
    "unembed/row_norm_mean",
    "unembed/row_norm_std",
    "unembed/row_norm_max",
    "unembed/mean_row_norm",
    "unembed/final_ln_gain_mean",
    "unembed/final_ln_gain_max_abs",
)


class UnembeddingFamily(SinglePassFamily):
    """Row-norm statistics of the unembedding and the final layer-norm gain."""

    name = FAMILY

    def __init__(self, context: CheckpointContext):
        super().__init__(context)
        self._result: dict[str, float] = {}

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None:
        parsed = parse_parameter_name(name)
        if parsed is None or parsed.kind != "weight" or not tensor.is_floating_point():
            return
        if parsed.module == "unembed" and tensor.dim() == 2:
            self._result.update(row_norm_statistics(tensor))
        elif parsed.module == "ln_final":
            gain = tensor.detach().reshape(-1).double()
            self._result["unembed/final_ln_gain_mean"] = float(gain.mean())
            self._result["unembed/final_ln_gain_max_abs"] = float(gain.abs().max())

    def finish(self) -> dict[str, float]:
        if not self._result:
            self.skip_reason = NOT_GPT_NEOX
            return {}
        return {feature: self._result.get(feature, math.nan) for feature in FEATURES}


def row_norm_statistics(matrix: torch.Tensor) -> dict[str, float]:
    """Return the row-norm features of a (vocabulary, hidden) unembedding matrix."""
    rows = matrix.detach().float()
    norms = torch.linalg.vector_norm(rows, dim=1).double()
    mean_row = rows.sum(dim=0).double() / rows.shape[0]
    return {
        "unembed/row_norm_mean": float(norms.mean()),
        "unembed/row_norm_std": float(norms.std(correction=1)) if norms.numel() > 1 else math.nan,
        "unembed/row_norm_max": float(norms.max()),
        "unembed/mean_row_norm": float(torch.linalg.vector_norm(mean_row)),
    }
