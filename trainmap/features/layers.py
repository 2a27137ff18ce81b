"""Per-layer and per-module-type weight statistics (family ``layers/``).

For every GPT-NeoX weight matrix (module types ``embed``, ``attn_qkv``,
``attn_out``, ``mlp_in``, ``mlp_out``, ``unembed``): Frobenius norm, spectral
norm, stable rank, effective rank, mean and variance of the singular values,
maximum absolute entry and excess kurtosis of the entries. For every layer norm
(``ln_attn``, ``ln_mlp``, ``ln_final``): mean, standard deviation and maximum
absolute value of the gain and of the bias. Formulas are in ``docs/features.md``.

Names: ``layers/layer{N}.{module}.{stat}`` for layer N, and
``layers/{module}.{stat}`` for the model-level modules and, for modules that
repeat per layer, the mean over layers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainmap.features.family import CheckpointContext, SinglePassFamily
from trainmap.features.gpt_neox import LAYER_MATRICES, MODEL_MATRICES, NOT_GPT_NEOX, NORMS, parse_parameter_name
from trainmap.features.spectra import Spectrum, effective_rank
from trainmap.features.reductions import square_sum64, sum64

FAMILY = "layers"
MATRIX_STATS = (
    "frobenius",
    "spectral",
    "stable_rank",
    "effective_rank",
    "sv_mean",
    "sv_var",
    "max_abs",
    "kurtosis",
)
NORM_STATS = ("gain_mean", "gain_std", "gain_max_abs", "bias_mean", "bias_std", "bias_max_abs")


class LayersFamily(SinglePassFamily):
    """Weight statistics per layer and module type of a GPT-NeoX checkpoint."""

    name = FAMILY

    def __init__(self, context: CheckpointContext):
        super().__init__(context)
        # (module, layer or None) -> {stat: value}
        self._values: dict[tuple[str, int | None], dict[str, float]] = {}
        # Matrices whose spectrum may still be computing: (key, spectrum).
        self._spectra: list[tuple[tuple[str, int | None], Spectrum]] = []

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None:
        parsed = parse_parameter_name(name)
        if parsed is None or not tensor.is_floating_point():
            return
        key = (parsed.module, parsed.layer)
        if parsed.module in LAYER_MATRICES + MODEL_MATRICES and parsed.kind == "weight" and tensor.dim() == 2:
            if finite:
                self._values.setdefault(key, {}).update(entry_statistics(tensor))
                self._spectra.append((key, self.context.spectra.get(name, tensor)))
            else:
                self._values.setdefault(key, {}).update(dict.fromkeys(MATRIX_STATS, math.nan))
        elif parsed.module in NORMS:
            prefix = "gain" if parsed.kind == "weight" else "bias"
            self._values.setdefault(key, {}).update(vector_statistics(tensor, prefix))

    def finish(self) -> dict[str, float]:
        if not self._values:
            self.skip_reason = NOT_GPT_NEOX
            return {}
        for key, spectrum in self._spectra:
            self._values[key].update(spectrum_statistics(spectrum))
        order = {stat: index for index, stat in enumerate(MATRIX_STATS + NORM_STATS)}
        per_layer: dict[str, list[dict[str, float]]] = {}
        model_level, layer_level = {}, {}
        for (module, layer), stats in sorted(self._values.items(), key=_model_level_first):
            stats = dict(sorted(stats.items(), key=lambda item: order[item[0]]))
            if layer is None:
                model_level.update({f"{FAMILY}/{module}.{stat}": value for stat, value in stats.items()})
            else:
                layer_level.update({f"{FAMILY}/layer{layer}.{module}.{stat}": value for stat, value in stats.items()})
                per_layer.setdefault(module, []).append(stats)
        means = {}
        for module, layers in per_layer.items():
            for stat in layers[0]:
                means[f"{FAMILY}/{module}.{stat}"] = float(np.mean([stats.get(stat, math.nan) for stats in layers]))
        return {**model_level, **means, **layer_level}


def spectrum_statistics(spectrum: Spectrum) -> dict[str, float]:
    """Return the ``MATRIX_STATS`` that come from a matrix's singular values."""
    singular = spectrum.singular_values
    frobenius_sq = spectrum.frobenius_sq
    spectral = spectrum.spectral_norm
    return {
        "frobenius": math.sqrt(frobenius_sq),
        "spectral": spectral,
        "stable_rank": frobenius_sq / spectral**2 if spectral > 0 else math.nan,
        "effective_rank": effective_rank(singular),
        "sv_mean": float(singular.mean()) if singular.numel() else math.nan,
        "sv_var": float(singular.var(correction=1)) if singular.numel() > 1 else math.nan,
    }


def entry_statistics(matrix: torch.Tensor) -> dict[str, float]:
    """Return the ``MATRIX_STATS`` that come from a matrix's entries."""
    low, high = torch.aminmax(matrix)
    return {"max_abs": max(-float(low), float(high)), "kurtosis": excess_kurtosis(matrix)}


def excess_kurtosis(tensor: torch.Tensor) -> float:
    """Return m4 / m2**2 - 3 of the entries (population central moments); NaN if constant."""
    flat = tensor.detach().reshape(-1)
    count = flat.numel()
    if count == 0:
        return math.nan
    centred = flat.float() - sum64(tensor) / count
    squares = centred.mul_(centred)
    m2 = sum64(squares) / count
    m4 = square_sum64(squares) / count
    return m4 / (m2 * m2) - 3.0 if m2 > 0 else math.nan


def vector_statistics(tensor: torch.Tensor, prefix: str) -> dict[str, float]:
    """Return mean, standard deviation (n - 1) and maximum absolute value of a tensor."""
    values = tensor.detach().reshape(-1).double()
    count = values.numel()
    return {
        f"{prefix}_mean": float(values.mean()) if count else math.nan,
        f"{prefix}_std": float(values.std(correction=1)) if count > 1 else math.nan,
        f"{prefix}_max_abs": float(values.abs().max()) if count else math.nan,
    }


def _model_level_first(item) -> tuple:
    """Sort key of ``((module, layer), stats)``: model-level modules, then by layer."""
    (module, layer), _ = item
    return (layer is not None, layer or 0, module)
