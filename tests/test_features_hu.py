"""hu/ on pools too large to keep: the exact median passes, and real checkpoints."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trainmap.checkpoints import CheckpointRef, find_runs, open_checkpoint
from trainmap.features import streaming
from trainmap.features.extract import extract_checkpoint
from trainmap.features.hu import FEATURES, HuFamily
from trainmap.features.streaming import StreamingPool


def reference_hu(tensors: dict[str, torch.Tensor]) -> dict:
    """All hu/ features of a state dict: float64 SVDs and float64 pooled statistics."""
    weights, biases, per_matrix = [], [], {}
    for name, value in tensors.items():
        if name.startswith("embed") or "norm" in name.lower():
            continue
        if name.endswith(".weight"):
            matrix = value.double().reshape(value.shape[0], -1)
            weights.append(matrix.flatten())
            singular = torch.linalg.svdvals(matrix)
            spectral = float(singular[0])
            singular[singular < 1e-5] = 0.0
            l1, l2, trace = float(matrix.abs().sum()), float(matrix.norm()), float(torch.trace(matrix))
            for key, metric in {"L1": l1, "L2": l2, "L1_L2": l1 / l2, "trace": trace, "lambda_max": spectral,
                                "trace_lambda": trace / spectral, "mu_lambda": float(singular.mean()),
                                "sigma_lambda": float(singular.var())}.items():
                per_matrix.setdefault(key, []).append(metric)
        elif name.endswith(".bias"):
            biases.append(value.double().flatten())
    result = {f"hu/{key}": float(np.mean(values)) for key, values in per_matrix.items()}
    for values, suffix in ((weights, "w"), (biases, "b")):
        pooled = torch.cat(values)
        result[f"hu/mu_{suffix}"] = float(pooled.mean())
        result[f"hu/sigma_{suffix}"] = float(pooled.var())
        result[f"hu/median_{suffix}"] = float(pooled.median())
    return result


def pool_median(chunks: list[torch.Tensor]) -> tuple[float, int]:
    """Return a StreamingPool's median of ``chunks`` and the number of extra passes it took."""
    pool = StreamingPool()
    for chunk in chunks:
        pool.add(chunk)
    passes = 0
    while pool.start_pass():
        passes += 1
        for chunk in chunks:
            pool.collect(chunk)
    return pool.median(), passes


@pytest.fixture
def small_keep_limit(monkeypatch):
    """Make pools of a few thousand values find the median through brackets."""
    monkeypatch.setattr(streaming, "KEEP_ALL_LIMIT", 1000)
    monkeypatch.setattr(streaming, "SAMPLE_STRIDE", 7)


@pytest.fixture
def no_guess(small_keep_limit, monkeypatch):
    """Drop the guessed bracket after the first tensor, so the sample's bracket passes run."""
    monkeypatch.setattr(streaming, "SPECULATIVE_LIMIT", -1)


def assert_saved_matches_reference(tensors: dict, folder, step: int) -> None:
    """Save ``tensors`` as a checkpoint in ``folder`` and compare its hu/ row with the reference."""
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    row = extract_checkpoint(CheckpointRef("run", step, folder), ("hu",))
    expected = reference_hu(tensors)
    for feature in FEATURES:
        assert row[feature] == pytest.approx(expected[feature], rel=1e-5, abs=1e-12), feature


def test_small_pool_median_needs_no_pass():
    chunks = [torch.randn(40, 30, generator=torch.Generator().manual_seed(0))]
    median, passes = pool_median(chunks)
    assert median == torch.cat([c.flatten() for c in chunks]).median().item()
    assert passes == 0


def mixed_chunks(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(50, 41, generator=generator) * scale + shift
            for scale, shift in ((0.02, 0.0), (1.0, 0.3), (1e-4, -0.01), (3.0, 0.0))]


@pytest.mark.parametrize("seed", range(4))
def test_guessed_bracket_median_matches_torch(small_keep_limit, seed):
    chunks = mixed_chunks(seed)
    median, _ = pool_median(chunks)
    assert median == torch.cat([c.flatten() for c in chunks]).median().item()


def test_guessed_bracket_needs_no_pass_for_centred_weights(small_keep_limit):
    generator = torch.Generator().manual_seed(20)
    chunks = [torch.randn(40, 30, generator=generator) * scale for scale in (0.02, 0.05, 0.01, 0.03)]
    median, passes = pool_median(chunks)
    assert median == torch.cat([c.flatten() for c in chunks]).median().item()
    assert passes == 0


def test_guessed_bracket_miss_falls_back_to_sample(small_keep_limit):
    # The first tensor sits far below the others, so the guess misses the median.
    generator = torch.Generator().manual_seed(21)
    chunks = [torch.randn(2000, generator=generator) - 50.0, torch.randn(3000, generator=generator)]
    median, passes = pool_median(chunks)
    assert median == torch.cat(chunks).median().item()
    assert passes == 1


@pytest.mark.parametrize("seed", range(4))
def test_sample_bracket_median_matches_torch(no_guess, seed):
    chunks = mixed_chunks(seed)
    median, passes = pool_median(chunks)
    assert median == torch.cat([c.flatten() for c in chunks]).median().item()
    assert passes == 1


@pytest.mark.parametrize("guess", [True, False])
def test_bracket_median_with_ties(small_keep_limit, monkeypatch, guess):
    if not guess:
        monkeypatch.setattr(streaming, "SPECULATIVE_LIMIT", -1)
    chunks = [torch.ones(1500), torch.zeros(3000), -torch.ones(1499)]
    median, _ = pool_median(chunks)
    assert median == 0.0


@pytest.mark.parametrize("guess", [True, False])
def test_bracket_median_of_constant_pool(small_keep_limit, monkeypatch, guess):
    if not guess:
        monkeypatch.setattr(streaming, "SPECULATIVE_LIMIT", -1)
    median, _ = pool_median([torch.full((2000,), 0.25), torch.full((3000,), 0.25)])
    assert median == 0.25


def test_bracket_median_widens_after_unrepresentative_sample(no_guess):
    # Every sampled position (a multiple of the stride 7) contains a large value,
    # so the first bracket sits far above the true median.
    values = torch.randn(7000, generator=torch.Generator().manual_seed(5))
    values[::7] = 100.0 + torch.arange(1000, dtype=torch.float32)
    median, passes = pool_median([values[:3500], values[3500:]])
    assert median == values.median().item()
    assert passes > 1


@pytest.mark.parametrize("guess", [True, False])
def test_bracket_median_lower_median_for_even_count(small_keep_limit, monkeypatch, guess):
    if not guess:
        monkeypatch.setattr(streaming, "SPECULATIVE_LIMIT", -1)
    values = torch.arange(4000, dtype=torch.float32)
    median, _ = pool_median([values[torch.randperm(4000, generator=torch.Generator().manual_seed(6))]])
    assert median == 1999.0


def test_pool_mean_and_variance_match_float64():
    values = torch.randn(300, 200, generator=torch.Generator().manual_seed(7)) * 0.02 + 1e-4
    pool = StreamingPool()
    pool.add(values[:100])
    pool.add(values[100:])
    exact = values.double().flatten()
    # Row sums run in float32: the error of the mean is about 1e-7 of the mean absolute value.
    assert pool.mean() == pytest.approx(float(exact.mean()), abs=1e-7 * float(exact.abs().mean()))
    assert pool.variance() == pytest.approx(float(exact.var()), rel=1e-6)


def test_pool_variance_when_mean_dominates():
    values = torch.randn(500, 64, generator=torch.Generator().manual_seed(8)) * 1e-3 + 10.0
    pool = StreamingPool()
    pool.add(values)
    assert pool.variance() == pytest.approx(float(values.double().var()), rel=1e-6)


@pytest.mark.parametrize("guess", [True, False])
def test_family_passes_match_reference(small_keep_limit, monkeypatch, tmp_path, guess):
    if not guess:
        monkeypatch.setattr(streaming, "SPECULATIVE_LIMIT", -1)
    generator = torch.Generator().manual_seed(9)
    tensors = {
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": torch.randn(64, 16, generator=generator) * 0.02,
        "gpt_neox.layers.0.mlp.dense_h_to_4h.bias": torch.randn(64, generator=generator) * 0.01,
        "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": torch.randn(16, 64, generator=generator) * 0.05 + 0.01,
        "gpt_neox.layers.0.mlp.dense_4h_to_h.bias": torch.zeros(16),
        "gpt_neox.embed_in.weight": torch.randn(50, 16, generator=generator),
        "embed_out.weight": torch.randn(50, 16, generator=generator),
        "gpt_neox.final_layer_norm.weight": torch.ones(16),
    }
    assert_saved_matches_reference(tensors, tmp_path / "step3", 3)


@pytest.mark.parametrize("run_index", [0, 3])
def test_trained_checkpoints_match_reference(micro_runs, run_index):
    for checkpoint in find_runs(micro_runs)[run_index].checkpoints[::3]:
        tensors = dict(open_checkpoint(checkpoint).tensors())
        row = extract_checkpoint(checkpoint, ("hu",))
        expected = reference_hu(tensors)
        for feature in FEATURES:
            assert row[feature] == pytest.approx(expected[feature], rel=1e-5, abs=1e-12), (checkpoint.step, feature)


def test_trained_checkpoint_with_rank_deficient_matrix(micro_runs, tmp_path):
    checkpoint = find_runs(micro_runs)[0].checkpoints[-1]
    tensors = dict(open_checkpoint(checkpoint).tensors())
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    weight = tensors[name]
    left, singular, right = torch.linalg.svd(weight, full_matrices=False)
    singular[4:] = 0.0
    tensors[name] = (left * singular) @ right
    assert_saved_matches_reference(tensors, tmp_path / "step24", 24)


def test_checkpoint_without_biases_gives_nan_bias_features(tmp_path):
    (tmp_path / "step0").mkdir()
    save_file({"w.weight": torch.randn(6, 4, generator=torch.Generator().manual_seed(10))},
              tmp_path / "step0" / "model.safetensors")
    row = extract_checkpoint(CheckpointRef("run", 0, tmp_path / "step0"), ("hu",))
    assert math.isnan(row["hu/mu_b"])
    assert math.isnan(row["hu/median_b"])
    assert not math.isnan(row["hu/mu_w"])


def test_family_without_revisit_loop_raises_for_median():
    family = HuFamily()
    family.visit("w.weight", torch.randn(2000, 1000, generator=torch.Generator().manual_seed(11)), True)
    with pytest.raises(RuntimeError, match="call start_pass"):
        family.finish()
