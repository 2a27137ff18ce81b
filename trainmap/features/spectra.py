"""Singular values of weight matrices from one eigendecomposition of the Gram matrix.

The singular values of an (n, k) matrix A with n >= k are the square roots of the
eigenvalues of its (k, k) Gram matrix A^T A. Two paths compute them:

- fast: the Gram product in float32, its eigenvalues in float64;
- exact: the Gram product and its eigenvalues in float64.

The fast path is taken only for well-conditioned matrices, where its error is
far below the 1e-5 relative agreement that the tests demand. Rounding the float32
Gram product G perturbs each eigenvalue by a few float32 epsilons times the
largest one, so a singular value s moves by about eps32 * s_max**2 / s. The fast
path therefore requires G - tau * ||G||_F * I to be positive definite, with
tau = ``FAST_PATH_MIN_CONDITION``: its float32 Cholesky factorisation must
succeed. Then every eigenvalue exceeds tau times the largest one, up to the
factorisation's rounding (of order sqrt(k) * eps32 * ||G||, a few percent of
the bound for k up to several thousand). The fast path also requires G to be
finite and not vanishingly small, and no eigenvalue within the error allowance
of a critical value (such as the ``hu/`` zero threshold), where a small error
would flip a comparison. Everything else takes the exact path: square and
rank-deficient matrices are typical cases. The Cholesky test costs about a tenth
of an eigendecomposition and saves one for every rejected matrix.

Accuracy of the exact path: eigenvalues of the float64 Gram matrix are accurate
to about 1e-16 times the largest one, so singular values down to about 1e-8 of
the largest one are resolved.

The eigendecomposition is the slowest step and does not speed up with more
threads at these sizes, so :class:`SpectrumCache` can run it on a background
thread while the caller reads the next tensor and forms its Gram product.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import torch

FAST_PATH_MIN_CONDITION = 1e-3
# Allowed eigenvalue error of the fast path, in float32 epsilons times the largest
# eigenvalue. Measured errors of the float32 Gram product on random and
# power-law spectra of Pythia-160M shapes stay below 3 epsilons.
FAST_PATH_ERROR = 8.0
# Eigendecompositions queued on the background thread before the caller waits;
# each holds a (k, k) float64 Gram matrix and possibly a reference to its tensor.
MAX_PENDING = 2
_FLOAT32_EPS = torch.finfo(torch.float32).eps
# Below this Frobenius norm the float32 Gram product may have underflowed.
_MIN_TRUSTED_GRAM_NORM = 1e-30
_MIN_GRAM_BLOCK = 64
_background: ThreadPoolExecutor | None = None


class Spectrum:
    """Singular values of one matrix, possibly still being computed on a background thread.

    Attributes
    ----------
    frobenius_sq : float
        Sum of squared entries (the trace of the Gram matrix), known at once.
    singular_values : torch.Tensor
        float64, descending, ``min(rows, columns)`` values; reading it waits for
        the background computation and re-raises its error.
    exact : bool
        True when the float64 path computed them.
    """

    def __init__(self, frobenius_sq: float, result: tuple[torch.Tensor, bool] | None = None,
                 pending: Future | None = None):
        self.frobenius_sq = frobenius_sq
        self._result = result
        self._pending = pending

    @property
    def singular_values(self) -> torch.Tensor:
        return self.wait()[0]

    @property
    def exact(self) -> bool:
        return self.wait()[1]

    @property
    def spectral_norm(self) -> float:
        """Largest singular value (0 for an empty spectrum)."""
        values = self.singular_values
        return float(values[0]) if values.numel() else 0.0

    def wait(self) -> tuple[torch.Tensor, bool]:
        """Return ``(singular_values, exact)``, waiting for the background thread if needed."""
        if self._result is None:
            self._result = self._pending.result()
            self._pending = None
        return self._result


def spectrum(
    matrix: torch.Tensor,
    critical_values: tuple[float, ...] = (),
    executor: ThreadPoolExecutor | None = None,
) -> Spectrum:
    """Compute the singular values of a finite 2-D tensor.

    Parameters
    ----------
    matrix : torch.Tensor
        Shape (rows, columns), floating point, finite.
    critical_values : tuple of float
        Singular values that callers compare against (for example a threshold
        below which values count as zero). The fast path is rejected when any
        singular value is too close to one of them to decide the comparison.
    executor : ThreadPoolExecutor, optional
        Runs the eigendecomposition; None runs it before returning.

    Returns
    -------
    Spectrum
    """
    if matrix.dim() != 2:
        raise ValueError(f"spectrum() needs a 2-D tensor, got shape {tuple(matrix.shape)}")
    tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    if tall.shape[1] == 0:
        return Spectrum(0.0, (torch.zeros(0, dtype=torch.float64), True))
    if matrix.dtype != torch.float64:
        gram = gram_float32(tall.float())
        if _well_conditioned(gram):
            gram = gram.double()
            task = partial(_fast_eigenvalues, gram, tall, critical_values)
            return _launch(task, float(gram.diagonal().sum()), executor)
    values = tall.double()
    gram = values.T @ values
    return _launch(partial(_exact_eigenvalues, gram), float(gram.diagonal().sum()), executor)


def gram_float32(tall: torch.Tensor) -> torch.Tensor:
    """Return the (k, k) Gram matrix of an (n, k) float32 matrix, n >= k.

    The matrix is symmetric, so only the blocks on and above the diagonal of a
    4 x 4 block grid are multiplied (10 of 16 blocks) and mirrored below.
    """
    k = tall.shape[1]
    if k < 4 * _MIN_GRAM_BLOCK:
        return tall.T @ tall
    edges = [k * index // 4 for index in range(5)]
    gram = torch.empty(k, k, dtype=tall.dtype)
    for start, stop in zip(edges[:-1], edges[1:]):
        rows = tall[:, start:stop].T @ tall[:, start:]  # block row, diagonal block onwards
        gram[start:stop, start:] = rows
        gram[stop:, start:stop] = rows[:, stop - start:].T
    return gram


class SpectrumCache:
    """Singular values of the tensor being visited, shared by the families.

    Tensors reach the families one at a time, so the cache keeps only the last
    tensor's spectrum: the second family that requests it gets it for free.
    With ``background=True`` the eigendecompositions run on one background
    thread, at most ``MAX_PENDING`` at a time.
    """

    def __init__(self, critical_values: tuple[float, ...] = (), background: bool = False):
        self.critical_values = critical_values
        self._executor = _background_executor() if background else None
        self._pending: deque[Spectrum] = deque()
        self._name: str | None = None
        self._spectrum: Spectrum | None = None
        self.computed = 0

    def get(self, name: str, matrix: torch.Tensor) -> Spectrum:
        """Return the spectrum of ``matrix``, the 2-D view of tensor ``name``."""
        if name != self._name or self._spectrum is None:
            while len(self._pending) >= MAX_PENDING:
                self._pending.popleft().wait()
            self._spectrum = spectrum(matrix, self.critical_values, self._executor)
            self._name = name
            self.computed += 1
            if self._executor is not None:
                self._pending.append(self._spectrum)
        return self._spectrum


def effective_rank(singular_values: torch.Tensor) -> float:
    """Return exp of the Shannon entropy of the singular values normalised to sum 1.

    Zeros contribute nothing; NaN for an all-zero spectrum.
    """
    total = float(singular_values.sum())
    if total <= 0.0:
        return math.nan
    p = singular_values[singular_values > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def _launch(task, frobenius_sq: float, executor: ThreadPoolExecutor | None) -> Spectrum:
    if executor is None:
        return Spectrum(frobenius_sq, task())
    return Spectrum(frobenius_sq, pending=executor.submit(task))


def _well_conditioned(gram: torch.Tensor) -> bool:
    """Return True if the float32 Gram matrix passes the fast path's conditioning test."""
    frobenius = float(torch.linalg.matrix_norm(gram))
    if not math.isfinite(frobenius) or frobenius < _MIN_TRUSTED_GRAM_NORM:
        return False  # squared entries overflowed or underflowed float32
    shifted = gram - FAST_PATH_MIN_CONDITION * frobenius * torch.eye(gram.shape[0], dtype=gram.dtype)
    return not int(torch.linalg.cholesky_ex(shifted).info)


def _fast_eigenvalues(gram: torch.Tensor, tall: torch.Tensor, critical_values) -> tuple[torch.Tensor, bool]:
    """Eigenvalues of a float32 Gram product; the exact path if one is near a critical value."""
    eigenvalues = torch.linalg.eigvalsh(gram)
    allowance = FAST_PATH_ERROR * _FLOAT32_EPS * float(eigenvalues[-1])
    for value in critical_values:
        if bool(((eigenvalues - value * value).abs() <= allowance).any()):
            values = tall.double()
            return _exact_eigenvalues(values.T @ values)
    return eigenvalues.clamp_min(0.0).flip(0).sqrt(), False


def _exact_eigenvalues(gram: torch.Tensor) -> tuple[torch.Tensor, bool]:
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return eigenvalues.flip(0).sqrt(), True


def _background_executor() -> ThreadPoolExecutor:
    """Return the process's eigensolver thread, started on first use."""
    global _background
    if _background is None:
        _background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmap-eigvalsh")
    return _background
