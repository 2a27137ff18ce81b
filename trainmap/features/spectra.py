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

Threads: eigendecompositions run on one thread. At these sizes (k of a few
hundred to a few thousand) they make many small parallel calls. The CLI sets
``OMP_WAIT_POLICY=PASSIVE`` because spinning threads stall under contention.
With that policy and two threads, a 768 x 768 ``eigvalsh`` took 3.6 times as
long as with one thread. Spinning threads gained only about a quarter on an idle
machine (2-core Xeon, torch 2.13 with MKL). The eigendecomposition is also the
slowest step, so :class:`SpectrumCache` can run it on a helper thread while the
caller reads the next tensor and forms its Gram product.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch

FAST_PATH_MIN_CONDITION = 1e-3
# Allowed eigenvalue error of the fast path, in float32 epsilons times the largest
# eigenvalue. Measured errors of the float32 Gram product on random and
# power-law spectra of Pythia-160M shapes stay below 3 epsilons.
FAST_PATH_ERROR = 8.0
# Eigendecompositions queued on the helper thread before the caller waits; each
# keeps a (k, k) Gram matrix and a reference to its tensor.
MAX_PENDING = 2
_FLOAT32_EPS = torch.finfo(torch.float32).eps
# Below this Frobenius norm the float32 Gram product may have underflowed.
_MIN_TRUSTED_GRAM_NORM = 1e-30
_MIN_GRAM_BLOCK = 64
_helper: ThreadPoolExecutor | None = None


class Spectrum:
    """Singular values of one matrix, possibly still being computed on the helper thread.

    Attributes
    ----------
    frobenius_sq : float
        Sum of squared entries (the trace of the Gram matrix), known at once.
    singular_values : torch.Tensor
        float64, descending, ``min(rows, columns)`` values. Reading it waits for
        the helper thread and re-raises its error.
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
        """Return ``(singular_values, exact)`` once computed."""
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
    task = None
    if matrix.dtype != torch.float64:
        gram = gram_float32(tall.float())
        if _well_conditioned(gram):
            gram = gram.double()
            task = (_fast_singular_values, gram, tall, critical_values)
    if task is None:
        values = tall.double()
        gram = values.T @ values
        task = (_exact_singular_values, gram)
    frobenius_sq = float(gram.diagonal().sum())
    if executor is None:
        return Spectrum(frobenius_sq, task[0](*task[1:]))
    return Spectrum(frobenius_sq, pending=executor.submit(*task))


def gram_float32(tall: torch.Tensor) -> torch.Tensor:
    """Return the (k, k) Gram matrix of an (n, k) float32 matrix, n >= k.

    The matrix is symmetric, so only the blocks on and above the diagonal of a
    4 x 4 block grid are multiplied (10 of 16 blocks) and mirrored below.
    """
    k = tall.shape[1]
    if k < 4 * _MIN_GRAM_BLOCK:
        return tall.T @ tall
    edges = [k * index // 4 for index in range(5)]
    gram = torch.empty(k, k, dtype=tall.dtype, device=tall.device)
    for start, stop in zip(edges[:-1], edges[1:]):
        rows = tall[:, start:stop].T @ tall[:, start:]  # block row, diagonal block onwards
        gram[start:stop, start:] = rows
        gram[stop:, start:stop] = rows[:, stop - start:].T
    return gram


class SpectrumCache:
    """Singular values of the tensor being visited, shared by the families.

    Tensors reach the families one at a time, so the cache keeps only the last
    tensor's spectrum: the second family that requests it gets it for free.
    With ``helper_thread=True`` the eigendecompositions run on the process's
    helper thread, at most ``MAX_PENDING`` ahead of the caller. Read the
    results after the last :meth:`get` of a checkpoint, so that they overlap.
    """

    def __init__(self, critical_values: tuple[float, ...] = (), helper_thread: bool = False, device: str = "cpu"):
        self.critical_values = critical_values
        self.device = device
        # On a GPU the eigendecomposition runs there, so no helper thread is needed.
        self._executor = _helper_executor() if helper_thread and device == "cpu" else None
        self._pending: deque[Spectrum] = deque()
        self._name: str | None = None
        self._spectrum: Spectrum | None = None

    def get(self, name: str, matrix: torch.Tensor) -> Spectrum:
        """Return the spectrum of ``matrix``, the 2-D view of tensor ``name``."""
        if name != self._name or self._spectrum is None:
            while len(self._pending) >= MAX_PENDING:
                self._pending.popleft().wait()
            if self.device == "cpu":
                self._spectrum = spectrum(matrix, self.critical_values, self._executor)
            else:
                self._spectrum = _spectrum_on_device(matrix, self.critical_values, self.device)
            self._name = name
            if self._executor is not None:
                self._pending.append(self._spectrum)
        return self._spectrum


def _spectrum_on_device(matrix: torch.Tensor, critical_values: tuple[float, ...], device: str) -> Spectrum:
    """Compute a spectrum on ``device`` and return it with its values back on the CPU."""
    on_device = spectrum(matrix.to(device), critical_values)
    values, exact = on_device.wait()
    return Spectrum(on_device.frobenius_sq, (values.cpu(), exact))


def effective_rank(singular_values: torch.Tensor) -> float:
    """Return exp of the Shannon entropy of the singular values normalised to sum 1.

    Zeros contribute nothing; NaN for an all-zero spectrum.
    """
    total = float(singular_values.sum())
    if total <= 0.0:
        return math.nan
    p = singular_values[singular_values > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def _well_conditioned(gram: torch.Tensor) -> bool:
    """Return True if the float32 Gram matrix passes the fast path's conditioning test."""
    frobenius = float(torch.linalg.matrix_norm(gram))
    if not math.isfinite(frobenius) or frobenius < _MIN_TRUSTED_GRAM_NORM:
        return False  # squared entries overflowed or underflowed float32
    shifted = gram - FAST_PATH_MIN_CONDITION * frobenius * torch.eye(gram.shape[0], dtype=gram.dtype)
    return not int(torch.linalg.cholesky_ex(shifted).info)


def _fast_singular_values(gram: torch.Tensor, tall: torch.Tensor, critical_values) -> tuple[torch.Tensor, bool]:
    """Return ``(singular values, False)`` from a float32 Gram product, or the exact path's
    ``(singular values, True)`` if one is too close to a critical value."""
    with _one_thread():
        eigenvalues = torch.linalg.eigvalsh(gram)
    allowance = FAST_PATH_ERROR * _FLOAT32_EPS * float(eigenvalues[-1])
    for value in critical_values:
        if bool(((eigenvalues - value * value).abs() <= allowance).any()):
            values = tall.double()
            return _exact_singular_values(values.T @ values)
    return eigenvalues.clamp_min(0.0).flip(0).sqrt(), False


def _exact_singular_values(gram: torch.Tensor) -> tuple[torch.Tensor, bool]:
    with _one_thread():
        eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return eigenvalues.flip(0).sqrt(), True


@contextmanager
def _one_thread():
    """Run the enclosed torch calls of this thread on one thread, then restore the count.

    OpenMP and MKL thread counts are per calling thread in torch, so this does
    not slow down torch calls on other threads.

    NOTE: torch also keeps a process-wide default that a thread copies on its
    first parallel call. A thread that starts inside this block therefore
    begins with one thread.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _helper_executor() -> ThreadPoolExecutor:
    """Return the process's eigendecomposition thread, started on first use."""
    global _helper
    if _helper is None:
        _helper = ThreadPoolExecutor(1, thread_name_prefix="trainmap-eigvalsh")
    return _helper


def _forget_helper_after_fork() -> None:
    """A forked child has no helper thread; let it start its own."""
    global _helper
    _helper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper_after_fork)
