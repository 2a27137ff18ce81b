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

The reference runs two SVDs per matrix. Here the singular values come from one
symmetric eigendecomposition of the smaller Gram matrix, in float64, and the
global median is found exactly in two streaming passes, so no more than one
tensor is held in memory.
"""

from __future__ import annotations

import math

import numpy as np

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
_HIGH_BITS = 16  # the median search histograms the top 16 bits of each float32


def parameter_kind(name: str) -> str | None:
    """Return ``"weight"``, ``"bias"`` or None (skipped) for a parameter name."""
    if name.startswith("embed") or "norm" in name.lower():
        return None
    if name.endswith(".weight"):
        return "weight"
    if name.endswith(".bias"):
        return "bias"
    return None


def matrix_metrics(matrix: "torch.Tensor") -> dict[str, float]:
    """Compute the per-matrix Hu et al. metrics of a finite 2-D tensor.

    Parameters
    ----------
    matrix : torch.Tensor
        Shape (rows, columns), finite values.

    Returns
    -------
    dict
        Keys of ``MATRIX_METRICS``.
    """
    import torch

    values = matrix.double()
    l1 = float(values.abs().sum())
    l2 = math.sqrt(float((values * values).sum()))
    trace = float(values.diagonal().sum())
    singular = singular_values(values)
    spectral = float(singular.max())
    thresholded = torch.where(singular < ZERO_SINGULAR_VALUE, 0.0, singular)
    count = thresholded.numel()
    return {
        "L1": l1,
        "L2": l2,
        "L1_L2": _ratio(l1, l2),
        "trace": trace,
        "lambda_max": spectral,
        "trace_lambda": _ratio(trace, spectral),
        "mu_lambda": float(thresholded.mean()),
        "sigma_lambda": float(thresholded.var(correction=1)) if count > 1 else math.nan,
    }


def singular_values(matrix: "torch.Tensor") -> "torch.Tensor":
    """Return the min(rows, columns) singular values of ``matrix``, descending.

    The eigenvalues of the smaller Gram matrix are the squared singular values.
    Computing it in float64 keeps singular values down to about 1e-8 of the largest
    one accurate enough for the 1e-5 zero threshold.
    """
    import torch

    values = matrix.double()
    rows, columns = values.shape
    gram = values.T @ values if columns <= rows else values @ values.T  # (k, k), k = min
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return eigenvalues.sqrt().flip(0)


class HuFamily:
    """Accumulate the ``hu/`` features over the tensors of one checkpoint.

    Call :meth:`visit` for every tensor, then :meth:`revisit` for every name in
    :meth:`revisit_names` (the exact-median pass), then :meth:`finish`.
    """

    name = FAMILY

    def __init__(self):
        self._per_matrix: dict[str, list[float]] = {key: [] for key in MATRIX_METRICS}
        self._pools = {"w": _StreamingPool(), "b": _StreamingPool()}
        self._kinds: dict[str, str] = {}
        self.nonfinite = False

    def visit(self, name: str, tensor: "torch.Tensor", finite: bool) -> None:
        """Add one tensor; tensors with non-finite values make every feature NaN."""
        kind = parameter_kind(name)
        if kind is None or tensor.dim() == 0 or not tensor.is_floating_point():
            return
        self._kinds[name] = kind
        if not finite:
            self.nonfinite = True
        if self.nonfinite:
            return
        if kind == "weight":
            metrics = matrix_metrics(tensor.reshape(tensor.shape[0], -1))
            for key, value in metrics.items():
                self._per_matrix[key].append(value)
        self._pools[kind[0]].add(tensor)

    def revisit_names(self) -> list[str]:
        """Return the tensors the exact-median pass must read again."""
        return [] if self.nonfinite else list(self._kinds)

    def revisit(self, name: str, tensor: "torch.Tensor") -> None:
        """Collect the values of one tensor that fall in the median's histogram bin."""
        self._pools[self._kinds[name][0]].collect(tensor)

    def finish(self) -> dict[str, float]:
        """Return the 14 ``hu/`` features (all NaN after a non-finite tensor)."""
        if self.nonfinite:
            return {feature: math.nan for feature in FEATURES}
        result = {}
        for key, values in self._per_matrix.items():
            result[f"hu/{key}"] = float(np.mean(values)) if values else math.nan
        for suffix, pool in self._pools.items():
            result[f"hu/mu_{suffix}"] = pool.mean()
            result[f"hu/median_{suffix}"] = pool.median()
            result[f"hu/sigma_{suffix}"] = pool.variance()
        return {feature: result[feature] for feature in FEATURES}


class _StreamingPool:
    """Mean, variance and exact lower median of values seen tensor by tensor.

    Mean and variance use Chan et al.'s pairwise update in float64. The median
    takes two passes. The first histograms the top 16 bits of an order-preserving
    integer key of each float32, which locates the bin that contains the median.
    The second keeps only the values in that bin and sorts them.
    """

    def __init__(self):
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._histogram = None
        self._target_bin: int | None = None
        self._rank_in_bin = 0
        self._collected: list[np.ndarray] = []

    def add(self, tensor: "torch.Tensor") -> None:
        import torch

        values = tensor.detach().reshape(-1).double()
        count = values.numel()
        if count == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + count
        delta = mean - self._mean
        self._mean += delta * count / total
        self._m2 += m2 + delta * delta * self.count * count / total
        self.count = total

        bins = torch.bincount(_high_bits(tensor), minlength=1 << _HIGH_BITS)
        self._histogram = bins if self._histogram is None else self._histogram + bins

    def mean(self) -> float:
        return self._mean if self.count else math.nan

    def variance(self) -> float:
        return self._m2 / (self.count - 1) if self.count > 1 else math.nan

    def collect(self, tensor: "torch.Tensor") -> None:
        if self._target_bin is None:
            self._locate_median_bin()
        flat = tensor.detach().reshape(-1).float()
        in_bin = flat[_high_bits(flat) == self._target_bin]
        if in_bin.numel():
            self._collected.append(in_bin.numpy().copy())

    def median(self) -> float:
        if self.count == 0:
            return math.nan
        if self._target_bin is None:
            raise RuntimeError("median() needs the second pass: call collect() on every tensor")
        values = np.sort(np.concatenate(self._collected))
        return float(values[self._rank_in_bin])

    def _locate_median_bin(self) -> None:
        import torch

        rank = (self.count - 1) // 2
        cumulative = torch.cumsum(self._histogram, 0)
        target = int(torch.searchsorted(cumulative, torch.tensor(rank), right=True))
        before = int(cumulative[target - 1]) if target > 0 else 0
        self._target_bin = target
        self._rank_in_bin = rank - before


def _high_bits(tensor: "torch.Tensor") -> "torch.Tensor":
    """Return the top 16 bits of an order-preserving int key of each float32 value."""
    import torch

    bits = tensor.detach().reshape(-1).float().contiguous().view(torch.int32).long()
    # Negative floats order backwards in their bit pattern; reflect them below 0.
    key = torch.where(bits < 0, -(1 << 31) - 1 - bits, bits) + (1 << 31)
    return key >> (32 - _HIGH_BITS)


def _ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan
