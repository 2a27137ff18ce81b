"""Sub-layer spectral norms against the embedding scale, and the spread of norms (family ``scale/``).

Small token embeddings next to large sub-layer weights let the sub-layers'
outputs dominate the residual stream from the first layer on, a known precursor
of loss spikes. With e the root mean square of the entries of the input
embedding (``gpt_neox.embed_in.weight``):

- ``scale/embed_rms``: e;
- ``scale/layer{N}.{module}_to_embed``: sigma_max(W) / e for the four matrices
  of layer N (``attn_qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``);
- ``scale/{module}_to_embed_max``: the largest of those over the layers;
- ``scale/spectral_cv``, ``scale/frobenius_cv``: standard deviation (n - 1)
  over mean of the spectral and of the Frobenius norms of all layer matrices;
- ``scale/spectral_max_to_min``: the largest over the smallest spectral norm.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainmap.features.family import CheckpointContext, SinglePassFamily
from trainmap.features.gpt_neox import LAYER_MATRICES, NOT_GPT_NEOX, parse_parameter_name
from trainmap.features.reductions import square_sum64
from trainmap.features.spectra import Spectrum

FAMILY = "scale"


class ScaleFamily(SinglePassFamily):
    """Embedding scale, sub-layer spectral norms relative to it, and norm spread."""

    name = FAMILY

    def __init__(self, context: CheckpointContext):
        super().__init__(context)
        self._embed_rms: float | None = None
        # (layer, module) -> spectrum, or None for a matrix with non-finite values
        self._spectra: dict[tuple[int, str], Spectrum | None] = {}

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None:
        parsed = parse_parameter_name(name)
        if parsed is None or parsed.kind != "weight" or tensor.dim() != 2 or not tensor.is_floating_point():
            return
        if parsed.module == "embed":
            count = tensor.numel()
            self._embed_rms = math.sqrt(square_sum64(tensor) / count) if count else math.nan
        elif parsed.module in LAYER_MATRICES:
            self._spectra[(parsed.layer, parsed.module)] = self.context.spectra.get(name, tensor) if finite else None

    def finish(self) -> dict[str, float]:
        if not self._spectra:
            self.skip_reason = NOT_GPT_NEOX
            return {}
        self._norms = {
            key: (spectrum.spectral_norm, math.sqrt(spectrum.frobenius_sq)) if spectrum is not None else (math.nan, math.nan)
            for key, spectrum in self._spectra.items()
        }
        embed = self._embed_rms if self._embed_rms else math.nan
        result = {f"{FAMILY}/embed_rms": self._embed_rms if self._embed_rms is not None else math.nan}
        for (layer, module), (spectral, _) in sorted(self._norms.items()):
            result[f"{FAMILY}/layer{layer}.{module}_to_embed"] = spectral / embed
        for module in LAYER_MATRICES:
            ratios = [spectral / embed for (_, other), (spectral, _) in self._norms.items() if other == module]
            if ratios:
                result[f"{FAMILY}/{module}_to_embed_max"] = float(np.max(ratios))
        spectral_norms = np.array([spectral for spectral, _ in self._norms.values()])
        frobenius_norms = np.array([frobenius for _, frobenius in self._norms.values()])
        result[f"{FAMILY}/spectral_cv"] = _coefficient_of_variation(spectral_norms)
        result[f"{FAMILY}/frobenius_cv"] = _coefficient_of_variation(frobenius_norms)
        smallest = float(spectral_norms.min())
        result[f"{FAMILY}/spectral_max_to_min"] = float(spectral_norms.max()) / smallest if smallest > 0 else math.nan
        return result


def _coefficient_of_variation(values: np.ndarray) -> float:
    if values.size < 2 or not values.mean() > 0:
        return math.nan
    return float(values.std(ddof=1) / values.mean())
