"""Singular values from the Gram matrix against float64 SVDs, on both paths."""

import math

import pytest
import torch

from trainmap.features.hu import MATRIX_METRICS, matrix_metrics
from trainmap.features.spectra import FAST_PATH_MIN_CONDITION, SpectrumCache, _helper_executor, effective_rank, spectrum


def reference_metrics(matrix: torch.Tensor) -> dict:
    """Per-matrix hu/ metrics from a float64 SVD, the reference definition."""
    x = matrix.double()
    singular = torch.linalg.svdvals(x)
    spectral = float(singular[0])
    thresholded = torch.where(singular < 1e-5, 0.0, singular)
    l1 = float(x.abs().sum())
    l2 = float(torch.linalg.vector_norm(x))
    trace = float(torch.trace(x))
    return {"L1": l1, "L2": l2, "L1_L2": l1 / l2, "trace": trace, "lambda_max": spectral,
            "trace_lambda": trace / spectral, "mu_lambda": float(thresholded.mean()),
            "sigma_lambda": float(thresholded.var()) if thresholded.numel() > 1 else math.nan}


def power_law(rows: int, columns: int, exponent: float, scale: float, seed: int) -> torch.Tensor:
    """A float32 matrix with singular values scale * i**-exponent and random singular vectors."""
    generator = torch.Generator().manual_seed(seed)
    k = min(rows, columns)
    left, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(columns, k, generator=generator, dtype=torch.float64))
    singular = scale * torch.arange(1, k + 1, dtype=torch.float64) ** -exponent
    return ((left * singular) @ right.T).float()


def assert_metrics_agree(matrix: torch.Tensor):
    actual = matrix_metrics(matrix)
    expected = reference_metrics(matrix)
    for key in MATRIX_METRICS:
        assert actual[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (257, 256), (64, 64), (500, 1), (1, 40)])
@pytest.mark.parametrize("scale", [1e-3, 0.02, 1.0, 40.0])
def test_random_matrices_match_svd(shape, scale):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(7)) * scale
    assert_metrics_agree(matrix)


@pytest.mark.parametrize("exponent", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_power_law_spectra_match_svd(exponent, scale):
    assert_metrics_agree(power_law(240, 120, exponent, scale, seed=3))


@pytest.mark.parametrize("rank", [1, 5, 60])
def test_rank_deficient_matrices_match_svd(rank):
    generator = torch.Generator().manual_seed(rank)
    matrix = torch.randn(200, rank, generator=generator) @ torch.randn(rank, 120, generator=generator)
    assert_metrics_agree(matrix)


@pytest.mark.parametrize("scale", [1e-2, 1.0, 50.0])
def test_fast_path_at_its_condition_limit_matches_svd(scale):
    # The smallest squared singular value sits just above the fast path's
    # limit, where the float32 Gram product's relative error is largest.
    generator = torch.Generator().manual_seed(11)
    left, _ = torch.linalg.qr(torch.randn(480, 120, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(120, 120, generator=generator, dtype=torch.float64))
    smallest = 0.0
    for _ in range(3):  # the Gram matrix's norm depends a little on the smallest value
        singular = torch.linspace(smallest, 1.0, 120, dtype=torch.float64)
        smallest = math.sqrt(1.05 * FAST_PATH_MIN_CONDITION * float((singular**4).sum().sqrt()))
    matrix = ((left * (scale * singular)) @ right.T).float()
    assert spectrum(matrix).exact is False
    assert_metrics_agree(matrix)


def test_zero_rows_and_columns_match_svd():
    matrix = torch.randn(150, 90, generator=torch.Generator().manual_seed(4))
    matrix[:, :30] = 0.0
    matrix[::3] = 0.0
    assert_metrics_agree(matrix)


def test_singular_values_around_zero_threshold_match_svd():
    # Half the singular values just below 1e-5, half just above: each
    # comparison with the threshold must come out as in float64.
    generator = torch.Generator().manual_seed(5)
    left, _ = torch.linalg.qr(torch.randn(160, 80, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(80, 80, generator=generator, dtype=torch.float64))
    singular = torch.linspace(0.9e-5, 1.1e-5, 80, dtype=torch.float64)
    assert_metrics_agree(((left * singular) @ right.T).float())


def test_tiny_and_huge_entries_match_svd():
    base = torch.randn(120, 60, generator=torch.Generator().manual_seed(6))
    assert_metrics_agree(base * 1e-22)
    assert_metrics_agree(base * 1e21)


def test_trained_matrices_match_svd(micro_runs):
    from trainmap.checkpoints import find_runs, open_checkpoint

    checkpoint = find_runs(micro_runs)[3].checkpoints[-1]  # the large-learning-rate run
    for name, tensor in open_checkpoint(checkpoint).tensors():
        if tensor.dim() == 2:
            assert_metrics_agree(tensor)


def test_well_conditioned_tall_matrix_takes_fast_path():
    matrix = torch.randn(400, 100, generator=torch.Generator().manual_seed(8))
    assert spectrum(matrix).exact is False


def test_square_random_matrix_takes_exact_path():
    matrix = torch.randn(100, 100, generator=torch.Generator().manual_seed(9))
    assert spectrum(matrix).exact is True


def test_value_near_critical_takes_exact_path():
    matrix = torch.cat([torch.diag(torch.tensor([1.0, 0.9, 0.8, 0.7])), torch.zeros(4, 4)])
    assert spectrum(matrix).exact is False
    assert spectrum(matrix, critical_values=(0.7,)).exact is True


def test_spectrum_is_descending_float64():
    result = spectrum(torch.randn(50, 20, generator=torch.Generator().manual_seed(10)))
    assert result.singular_values.dtype == torch.float64
    assert bool((result.singular_values[:-1] >= result.singular_values[1:]).all())


def test_helper_thread_gives_same_values():
    generator = torch.Generator().manual_seed(12)
    matrices = {f"m{index}": torch.randn(90, 30 + index, generator=generator) for index in range(5)}
    matrices["square"] = torch.randn(40, 40, generator=generator)
    background = SpectrumCache((1e-5,), helper_thread=True)
    spectra = {name: background.get(name, matrix) for name, matrix in matrices.items()}
    for name, matrix in matrices.items():
        expected = spectrum(matrix, (1e-5,))
        assert torch.equal(spectra[name].singular_values, expected.singular_values), name
        assert spectra[name].exact == expected.exact, name


def test_helper_thread_error_raises_on_read():
    with pytest.raises(TypeError, match="can.t multiply sequence"):
        spectrum(torch.randn(60, 20, generator=torch.Generator().manual_seed(13)),
                 critical_values=("critical",), executor=_helper_executor()).singular_values


def test_spectrum_rejects_non_matrix():
    with pytest.raises(ValueError, match="needs a 2-D tensor, got shape"):
        spectrum(torch.zeros(3, 4, 5))


def test_effective_rank_of_flat_spectrum_is_its_length():
    assert effective_rank(torch.ones(7, dtype=torch.float64)) == pytest.approx(7.0)


def test_effective_rank_ignores_zeros():
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64)) == pytest.approx(2.0)


def test_effective_rank_of_zero_spectrum_is_nan():
    assert math.isnan(effective_rank(torch.zeros(3, dtype=torch.float64)))


@pytest.mark.parametrize("shape", [(3000, 1000), (3_000_001,), (2, 1_500_000), (64, 3, 7)])
def test_whole_tensor_sums_match_float64(shape):
    from trainmap.features.reductions import abs_sum64, square_sum64, sum64

    values = torch.randn(shape, generator=torch.Generator().manual_seed(14)) * 0.02 + 1e-3
    exact = values.double()
    assert sum64(values) == pytest.approx(float(exact.sum()), rel=1e-7)
    assert abs_sum64(values) == pytest.approx(float(exact.abs().sum()), rel=1e-7)
    assert square_sum64(values) == pytest.approx(float((exact * exact).sum()), rel=1e-7)


def test_large_matrix_l1_and_l2_match_float64():
    matrix = torch.randn(3000, 1000, generator=torch.Generator().manual_seed(15)) * 0.02
    metrics = matrix_metrics(matrix)
    assert metrics["L1"] == pytest.approx(float(matrix.double().abs().sum()), rel=1e-7)
    assert metrics["L2"] == pytest.approx(float(matrix.double().norm()), rel=1e-7)
