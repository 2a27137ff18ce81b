"""Attention-logit growth proxies from the fused GPT-NeoX QKV weight (family ``qk/``).

GPT-NeoX computes queries, keys and values with one matrix W of shape
(3 * hidden, hidden) whose rows are grouped per head as [q | k | v], each
``head_size`` rows. For head h with query rows W_Q and key rows W_K
(``head_size`` x ``hidden`` each) and input layer-norm gain g, the pre-softmax
attention logit between normalised inputs x and y is

    x^T diag(g) W_Q^T W_K diag(g) y / sqrt(head_size)

and the feature is the spectral norm of that bilinear form: the largest logit
a pair of unit inputs can produce. It ignores rotary embeddings, the layer-norm
bias and the QKV bias. The spectral norm of the rank-``head_size`` product comes
from the R factors of QR decompositions of (W_Q diag(g))^T and (W_K diag(g))^T:
sigma_max(W_Q'^T W_K') = sigma_max(R_Q R_K^T), so no hidden x hidden matrix is formed.

Names: ``qk/layer{N}.spectral_max`` and ``qk/layer{N}.spectral_mean`` over the
heads of layer N, and ``qk/spectral_max`` and ``qk/spectral_mean`` over all heads.
"""

from __future__ import annotations

import logging
import math

import torch

from trainmap.features.family import CheckpointContext
from trainmap.features.gpt_neox import NOT_GPT_NEOX, parse_parameter_name

logger = logging.getLogger(__name__)

FAMILY = "qk"


class QueryKeyFamily:
    """Per-head query-key spectral norms; the QKV weights are read in a second pass,
    after the first pass has collected the layer-norm gains that scale them."""

    name = FAMILY

    def __init__(self, context: CheckpointContext):
        self.context = context
        self.skip_reason: str | None = None
        self._heads = context.config.get("num_attention_heads")
        self._gains: dict[int, torch.Tensor] = {}
        self._qkv_names: dict[str, int] = {}
        self._nonfinite_layers: set[int] = set()
        self._norms: dict[int, torch.Tensor] = {}
        self._passes = 0

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None:
        parsed = parse_parameter_name(name)
        if parsed is None or parsed.kind != "weight":
            return
        if parsed.module == "ln_attn":
            self._gains[parsed.layer] = tensor.detach().double().clone()
        elif parsed.module == "attn_qkv" and tensor.dim() == 2:
            self._qkv_names[name] = parsed.layer
            if not finite:
                self._nonfinite_layers.add(parsed.layer)

    def revisit_names(self) -> list[str]:
        self._passes += 1
        if self._passes > 1 or not isinstance(self._heads, int) or self._heads <= 0:
            return []
        return [name for name, layer in self._qkv_names.items() if layer not in self._nonfinite_layers]

    def revisit(self, name: str, tensor: torch.Tensor) -> None:
        layer = self._qkv_names[name]
        gain = self._gains.get(layer)
        if gain is None:
            logger.info("%s: no input_layernorm gain for layer %d; query-key norms are unscaled", self.context.ref.path, layer)
        try:
            self._norms[layer] = head_spectral_norms(tensor, self._heads, gain)
        except ValueError as error:
            logger.warning("%s: %s", self.context.ref.path, error)

    def finish(self) -> dict[str, float]:
        if not self._qkv_names:
            self.skip_reason = NOT_GPT_NEOX
            return {}
        if not isinstance(self._heads, int) or self._heads <= 0:
            self.skip_reason = (
                "config.json has no positive integer num_attention_heads, needed to split the "
                "fused query_key_value rows into heads"
            )
            return {}
        result = {}
        for layer in sorted(set(self._qkv_names.values())):
            norms = self._norms.get(layer)
            result[f"{FAMILY}/layer{layer}.spectral_max"] = float(norms.max()) if norms is not None else math.nan
            result[f"{FAMILY}/layer{layer}.spectral_mean"] = float(norms.mean()) if norms is not None else math.nan
        complete = len(self._norms) == len(set(self._qkv_names.values()))
        everything = torch.cat(list(self._norms.values())) if complete and self._norms else None
        result[f"{FAMILY}/spectral_max"] = float(everything.max()) if everything is not None else math.nan
        result[f"{FAMILY}/spectral_mean"] = float(everything.mean()) if everything is not None else math.nan
        return result


def head_spectral_norms(qkv: torch.Tensor, heads: int, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Return the spectral norm of each head's scaled query-key bilinear form, shape (heads,).

    Parameters
    ----------
    qkv : torch.Tensor
        Fused weight, shape (3 * heads * head_size, hidden), rows [q | k | v] per head.
    heads : int
        Number of attention heads.
    gain : torch.Tensor, optional
        Input layer-norm gain, shape (hidden,); None means no scaling.

    Raises
    ------
    ValueError
        If the row count is not a multiple of 3 * heads or the gain does not match.
    """
    rows, hidden = qkv.shape
    if rows % (3 * heads):
        raise ValueError(
            f"query_key_value weight has {rows} rows, not a multiple of 3 x {heads} heads; "
            "num_attention_heads in config.json does not match the checkpoint"
        )
    head_size = rows // (3 * heads)
    weights = qkv.detach().double().reshape(heads, 3, head_size, hidden)
    queries, keys = weights[:, 0], weights[:, 1]
    if gain is not None:
        if gain.shape != (hidden,):
            raise ValueError(f"input_layernorm gain has shape {tuple(gain.shape)}, expected ({hidden},)")
        queries = queries * gain
        keys = keys * gain
    r_queries = torch.linalg.qr(queries.transpose(1, 2), mode="r").R
    r_keys = torch.linalg.qr(keys.transpose(1, 2), mode="r").R
    products = r_queries @ r_keys.transpose(1, 2)
    return torch.linalg.matrix_norm(products, ord=2) / math.sqrt(head_size)
