"""The Hu et al. (2023) checkpoint metrics, as computed for PolyPythias (family ``hu/``).

Definitions follow ``polypythias/training-maps/extract_metrics.py`` in the
EleutherAI/pythia repository, including its quirks:

- Parameters whose name starts with ``embed`` or contains ``norm`` (any case) are
  skipped. With GPT-NeoX names this drops ``embed_out.weight`` but keeps
  ``gpt_neox.embed_in.weight``, because only the former starts with ``embed``.
- Every other ``*.weight`` is viewed as a matrix of shape (rows, -1); every
  ``*.bias`` only enters the bias statistics.
- ``trace`` is the sum of the main diagonal, also for non-square matrices.
- ``lambda_max`` is the largest singular value; for ``mu_lambda`` and
  ``sigma_lambda`` singular values under 1e-5 are set to 0 first.
- Every variance (``sigma_lambda``, ``sigma_w``, ``sigma_b``) has Bessel's
  correction (``torch.var`` defaults), and the medians are ``torch.median``'s lower
  median: the element of rank ``(n - 1) // 2``.
- Per-matrix metrics are averaged over matrices; ``mu_*``, ``median_*`` and
  ``sigma_*`` pool all weights (or all biases) into one set.

Where the reference fails, this module returns NaN instead: a matrix with
non-finite values (the reference returns None and then raises), a checkpoint
without biases (concatenating an empty list raises), a single singular value
(its Bessel variance is undefined).

The reference runs two float32 SVDs per matrix and float32 means. Here the
singular values come from one symmetric eigendecomposition of the smaller Gram
matrix (see :mod:`trainmap.features.spectra`). Per-tensor means and variances
are pooled in float64. The global median is exact: streaming passes find it
with one tensor in memory at a time (see :mod:`trainmap.features.streaming`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainmap.features.family import CheckpointContext
from trainmap.features.reductions import abs_sum64
from trainmap.features.spectra import Spectrum, SpectrumCache, spectrum
from trainmap.features.streaming import StreamingPool

FAMILY = "hu"
FEATURES = (
    "hu/L1",
    "hu/L2",
    "hu/L1_L2",
    "hu/trace",
    "hu/lambda_max",
    "hu/trace_lambda",
    "hu/mu_lambda",
    "hu/sigma_lambda",
    "hu/mu_w",
    "hu/median_w",
    "hu/sigma_w",
    "hu/mu_b",
    "hu/median_b",
    "hu/sigma_b",
)
MATRIX_METRICS = ("L1", "L2", "L1_L2", "trace", "lambda_max", "trace_lambda", "mu_lambda", "sigma_lambda")
ZERO_SINGULAR_VALUE = 1e-5


def parameter_kind(name: str) -> str | None:
    """Return ``"weight"``, ``"bias"`` or None (skipped) for a parameter name."""
    if name.startswith("embed") or "norm" in name.lower():
        return None
    if name.endswith(".weight"):
        return "weight"
    if name.endswith(".bias"):
        return "bias"
    return None


def matrix_metrics(matrix: torch.Tensor, spectra: SpectrumCache | None = None, name: str = "") -> dict[str, float]:
    """Compute the per-matrix Hu et al. metrics of a finite 2-D tensor.

    Parameters
    ----------
    matrix : torch.Tensor
        Shape (rows, columns), finite values.
    spectra : SpectrumCache, optional
        Shared cache of the current tensor's singular values.
    name : str
        Tensor name, the cache key.

    Returns
    -------
    dict
        Keys of ``MATRIX_METRICS``.
    """
    result = spectrum(matrix, (ZERO_SINGULAR_VALUE,)) if spectra is None else spectra.get(name, matrix)
    return _metrics_from_spectrum(_entry_metrics(matrix), result)


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Return the min(rows, columns) singular values of ``matrix``, descending, float64."""
    return spectrum(matrix, (ZERO_SINGULAR_VALUE,)).singular_values


class HuFamily:
    """Accumulate the ``hu/`` features over the tensors of one checkpoint.

    Call :meth:`visit` for every tensor, then :meth:`revisit` for the names that
    :meth:`revisit_names` returns until it returns none (the exact-median
    passes), then :meth:`finish`.
    """

    name = FAMILY

    def __init__(self, context: CheckpointContext | None = None):
        if context is None:
            self._spectra = SpectrumCache((ZERO_SINGULAR_VALUE,))
        else:
            self._spectra = context.spectra
        # (L1, trace, spectrum) per matrix; the spectrum may still be computing.
        self._matrices: list[tuple[dict[str, float], Spectrum]] = []
        self._pools = {"weight": StreamingPool(), "bias": StreamingPool()}
        self._kinds: dict[str, str] = {}
        self.nonfinite = False
        self.skip_reason: str | None = None

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None:
        """Add one tensor; tensors with non-finite values make every feature NaN."""
        kind = parameter_kind(name)
        if kind is None or tensor.dim() == 0 or not tensor.is_floating_point():
            return
        self._kinds[name] = kind
        if not finite:
            self.nonfinite = True
        if self.nonfinite:
            return
        sum_of_squares = None
        if kind == "weight":
            matrix = tensor.reshape(tensor.shape[0], -1)
            result = self._spectra.get(name, matrix)
            self._matrices.append((_entry_metrics(matrix), result))
            sum_of_squares = result.frobenius_sq
        self._pools[kind].add(tensor, sum_of_squares)

    def revisit_names(self) -> list[str]:
        """Start another median pass; return the tensors it must read (none when done)."""
        if self.nonfinite:
            return []
        pending = {kind for kind, pool in self._pools.items() if pool.start_pass()}
        return [name for name, kind in self._kinds.items() if kind in pending]

    def revisit(self, name: str, tensor: torch.Tensor) -> None:
        """Count one tensor's values against its pool's median bracket."""
        self._pools[self._kinds[name]].collect(tensor)

    def finish(self) -> dict[str, float]:
        """Return the 14 ``hu/`` features (all NaN after a non-finite tensor)."""
        if self.nonfinite:
            return {feature: math.nan for feature in FEATURES}
        if not self._kinds:
            self.skip_reason = "no parameter named *.weight or *.bias outside embed*/norm"
        result = {}
        per_matrix = [_metrics_from_spectrum(entries, spectrum) for entries, spectrum in self._matrices]
        for key in MATRIX_METRICS:
            values = [metrics[key] for metrics in per_matrix]
            result[f"hu/{key}"] = float(np.mean(values)) if values else math.nan
        for kind, pool in self._pools.items():
            suffix = kind[0]
            result[f"hu/mu_{suffix}"] = pool.mean()
            result[f"hu/median_{suffix}"] = pool.median()
            result[f"hu/sigma_{suffix}"] = pool.variance()
        return {feature: result[feature] for feature in FEATURES}


def _entry_metrics(matrix: torch.Tensor) -> dict[str, float]:
    """Return the metrics that need the entries rather than the singular values."""
    return {"L1": abs_sum64(matrix), "trace": float(matrix.diagonal().double().sum())}


def _metrics_from_spectrum(entries: dict[str, float], spectrum: Spectrum) -> dict[str, float]:
    l1, trace = entries["L1"], entries["trace"]
    l2 = math.sqrt(spectrum.frobenius_sq)
    singular = spectrum.singular_values
    spectral = float(singular[0]) if singular.numel() else 0.0
    thresholded = torch.where(singular < ZERO_SINGULAR_VALUE, 0.0, singular)
    count = thresholded.numel()
    return {
        "L1": l1,
        "L2": l2,
        "L1_L2": _ratio(l1, l2),
        "trace": trace,
        "lambda_max": spectral,
        "trace_lambda": _ratio(trace, spectral),
        "mu_lambda": float(thresholded.mean()) if count else math.nan,
        "sigma_lambda": float(thresholded.var(correction=1)) if count > 1 else math.nan,
    }


def _ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan
