"""The hu/ family against a slow float64 transcription of the PolyPythias reference."""

import math

import numpy as np
import pytest
import torch

from trainmap.checkpoints import find_runs, open_checkpoint
from trainmap.features.hu import FEATURES, HuFamily, matrix_metrics, parameter_kind, singular_values


def reference_matrix_metrics(matrix: torch.Tensor) -> dict:
    """Per-matrix metrics with two full SVDs, as the reference computes them."""
    x = matrix.double()
    spectral = torch.linalg.matrix_norm(x, ord=2).item()
    singular = torch.linalg.svd(x, full_matrices=False).S.clone()
    singular[singular < 1e-5] = 0.0
    l1 = torch.linalg.vector_norm(x, ord=1).item()
    l2 = torch.linalg.vector_norm(x, ord=2).item()
    trace = torch.trace(x).item()
    return {"L1": l1, "L2": l2, "L1_L2": l1 / l2, "trace": trace, "lambda_max": spectral,
            "trace_lambda": trace / spectral, "mu_lambda": singular.mean().item(),
            "sigma_lambda": singular.var().item()}


def reference_features(tensors: dict[str, torch.Tensor]) -> dict:
    """All hu/ features of a state dict, reference definition, float64."""
    weights, biases = [], []
    for name, value in tensors.items():
        if name.startswith("embed") or "norm" in name.lower():
            continue
        if name.endswith(".weight"):
            weights.append(value.double().reshape(value.shape[0], -1))
        elif name.endswith(".bias"):
            biases.append(value.double().reshape(value.shape[0], -1))
    per_matrix = [reference_matrix_metrics(w) for w in weights]
    result = {f"hu/{key}": float(np.mean([m[key] for m in per_matrix])) for key in per_matrix[0]}
    for values, suffix in ((weights, "w"), (biases, "b")):
        flat = torch.cat([v.flatten() for v in values])
        result[f"hu/mu_{suffix}"] = flat.mean().item()
        result[f"hu/sigma_{suffix}"] = flat.var().item()
        result[f"hu/median_{suffix}"] = flat.median().item()
    return result


def hu_of(tensors: dict[str, torch.Tensor]) -> dict:
    family = HuFamily()
    for name, value in tensors.items():
        family.visit(name, value, bool(torch.isfinite(value).all()))
    for name in family.revisit_names():
        family.revisit(name, tensors[name])
    return family.finish()


def assert_close(actual: dict, expected: dict, rel: float = 1e-5, abs_tol: float = 1e-9):
    for key in FEATURES:
        assert actual[key] == pytest.approx(expected[key], rel=rel, abs=abs_tol), key


@pytest.mark.parametrize("shape", [(64, 64), (192, 64), (64, 256), (7, 3)])
def test_matrix_metrics_match_reference_random(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02
    actual = matrix_metrics(matrix)
    expected = reference_matrix_metrics(matrix)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


def test_matrix_metrics_match_reference_rank_deficient():
    generator = torch.Generator().manual_seed(1)
    matrix = torch.randn(96, 4, generator=generator) @ torch.randn(4, 48, generator=generator)
    actual = matrix_metrics(matrix)
    expected = reference_matrix_metrics(matrix)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_rank_deficient_small_singular_values_are_zeroed():
    generator = torch.Generator().manual_seed(2)
    matrix = torch.randn(50, 3, generator=generator) @ torch.randn(3, 40, generator=generator)
    thresholded = matrix_metrics(matrix)["mu_lambda"] * 40
    assert thresholded == pytest.approx(float(singular_values(matrix)[:3].sum()), rel=1e-6)


def test_trace_of_non_square_matrix_sums_main_diagonal():
    matrix = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert matrix_metrics(matrix)["trace"] == 0 + 5 + 10


def test_selection_follows_reference_quirks():
    assert parameter_kind("embed_out.weight") is None
    assert parameter_kind("gpt_neox.embed_in.weight") == "weight"
    assert parameter_kind("gpt_neox.layers.0.input_layernorm.weight") is None
    assert parameter_kind("gpt_neox.final_layer_norm.bias") is None
    assert parameter_kind("gpt_neox.layers.0.mlp.dense_h_to_4h.bias") == "bias"


def test_family_matches_reference_on_trained_checkpoint(micro_runs):
    ref = find_runs(micro_runs)[0].checkpoints[-1]
    tensors = dict(open_checkpoint(ref).tensors())
    assert_close(hu_of(tensors), reference_features(tensors))


def test_median_is_lower_median_for_even_count():
    tensors = {"a.weight": torch.tensor([[4.0, 1.0], [3.0, 2.0]]), "a.bias": torch.tensor([1.0, 2.0])}
    result = hu_of(tensors)
    assert result["hu/median_w"] == 2.0
    assert result["hu/median_b"] == 1.0


def test_median_exact_with_negative_values_and_ties():
    values = torch.tensor([-3.0, -1e-8, -1e-8, 0.0, 2.5, 7.0, -0.5]).reshape(7, 1)
    tensors = {"x.weight": values, "x.bias": torch.tensor([-2.0, -1.0, 5.0])}
    assert hu_of(tensors)["hu/median_w"] == torch.median(values).item()


def test_nonfinite_tensor_makes_family_nan():
    tensors = {"a.weight": torch.tensor([[1.0, math.inf], [0.0, 1.0]]), "a.bias": torch.zeros(2)}
    result = hu_of(tensors)
    assert all(math.isnan(result[key]) for key in FEATURES)
