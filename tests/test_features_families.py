"""layers/, qk/, unembed/, scale/ and dynamics/ against direct float64 computations,
family selection, causality and graceful degradation on other architectures."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trainmap.checkpoints import CheckpointRef, load_run
from trainmap.features.extract import ALL_FAMILIES, extract_checkpoint, extract_runs, resolve_families
from trainmap.features.gpt_neox import NOT_GPT_NEOX

HIDDEN, HEADS, LAYERS, VOCAB = 8, 2, 2, 11
TENSOR_FAMILIES = ("hu", "layers", "qk", "unembed", "scale", "dynamics")


def neox_tensors(seed: int) -> dict[str, torch.Tensor]:
    """A tiny GPT-NeoX state dict with Hugging Face names, random values."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.1):
        return torch.randn(*shape, generator=generator) * scale

    tensors = {
        "gpt_neox.embed_in.weight": randn(VOCAB, HIDDEN, scale=0.02),
        "embed_out.weight": randn(VOCAB, HIDDEN),
        "gpt_neox.final_layer_norm.weight": 1.0 + randn(HIDDEN),
        "gpt_neox.final_layer_norm.bias": randn(HIDDEN),
    }
    for layer in range(LAYERS):
        prefix = f"gpt_neox.layers.{layer}."
        tensors.update({
            prefix + "input_layernorm.weight": 1.0 + randn(HIDDEN),
            prefix + "input_layernorm.bias": randn(HIDDEN),
            prefix + "post_attention_layernorm.weight": 1.0 + randn(HIDDEN),
            prefix + "post_attention_layernorm.bias": randn(HIDDEN),
            prefix + "attention.query_key_value.weight": randn(3 * HIDDEN, HIDDEN),
            prefix + "attention.query_key_value.bias": randn(3 * HIDDEN),
            prefix + "attention.dense.weight": randn(HIDDEN, HIDDEN),
            prefix + "attention.dense.bias": randn(HIDDEN),
            prefix + "mlp.dense_h_to_4h.weight": randn(4 * HIDDEN, HIDDEN),
            prefix + "mlp.dense_h_to_4h.bias": randn(4 * HIDDEN),
            prefix + "mlp.dense_4h_to_h.weight": randn(HIDDEN, 4 * HIDDEN),
            prefix + "mlp.dense_4h_to_h.bias": randn(HIDDEN),
        })
    return tensors


def write_checkpoint(folder, tensors, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: value.contiguous() for name, value in tensors.items()}, folder / "model.safetensors")
    config = {"num_attention_heads": HEADS} if config is None else config
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_run(root, steps, seed=0, drift=0.05):
    """A run whose parameters drift from step to step; returns the tensors per step."""
    generator = torch.Generator().manual_seed(seed + 1000)
    tensors = neox_tensors(seed)
    states = {}
    for step in steps:
        states[step] = tensors
        write_checkpoint(root / f"step{step}", tensors)
        tensors = {name: value + drift * torch.randn(value.shape, generator=generator) * value.abs().mean()
                   for name, value in tensors.items()}
    return states


def row_of(tmp_path, tensors, families, config=None):
    folder = write_checkpoint(tmp_path / "run" / "step7", tensors, config)
    return extract_checkpoint(CheckpointRef("run", 7, folder), families)


# ----------------------------------------------------------------- selection


def test_resolve_families_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown feature family bogus; choose from hu, layers"):
        resolve_families("hu,bogus")


def test_resolve_families_rejects_empty_selection():
    with pytest.raises(ValueError, match="no feature family selected"):
        resolve_families(" , ")


def test_resolve_families_all_selects_every_family():
    assert resolve_families("all") == ALL_FAMILIES
    assert set(ALL_FAMILIES) == {*TENSOR_FAMILIES, "loss"}


def test_resolve_families_strips_slash_and_duplicates():
    assert resolve_families("hu/, layers,hu") == ("hu", "layers")


def test_cli_extract_rejects_unknown_family(tmp_path, capsys):
    from trainmap.cli import main

    status = main(["extract", str(tmp_path), "-o", str(tmp_path / "t.parquet"), "--features", "hu,qkv"])
    assert status == 2
    assert "unknown feature family qkv" in capsys.readouterr().err


# ----------------------------------------------------------------- layers/


def test_layers_match_direct_computation(tmp_path):
    tensors = neox_tensors(1)
    row = row_of(tmp_path, tensors, ("layers",))
    weight = tensors["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"].double()
    singular = torch.linalg.svdvals(weight)
    p = singular / singular.sum()
    entries = weight.flatten().numpy()
    centred = entries - entries.mean()
    expected = {
        "frobenius": float(weight.norm()),
        "spectral": float(singular[0]),
        "stable_rank": float(weight.norm() ** 2 / singular[0] ** 2),
        "effective_rank": math.exp(float(-(p * p.log()).sum())),
        "sv_mean": float(singular.mean()),
        "sv_var": float(singular.var()),
        "max_abs": float(weight.abs().max()),
        "kurtosis": float(np.mean(centred**4) / np.mean(centred**2) ** 2 - 3),
    }
    for stat, value in expected.items():
        assert row[f"layers/layer1.mlp_in.{stat}"] == pytest.approx(value, rel=1e-5), stat


def test_layers_module_value_is_mean_over_layers(tmp_path):
    row = row_of(tmp_path, neox_tensors(2), ("layers",))
    per_layer = [row[f"layers/layer{layer}.attn_qkv.spectral"] for layer in range(LAYERS)]
    assert row["layers/attn_qkv.spectral"] == pytest.approx(np.mean(per_layer))


def test_layers_norm_statistics(tmp_path):
    tensors = neox_tensors(3)
    row = row_of(tmp_path, tensors, ("layers",))
    gain = tensors["gpt_neox.layers.0.post_attention_layernorm.weight"].double()
    bias = tensors["gpt_neox.final_layer_norm.bias"].double()
    assert row["layers/layer0.ln_mlp.gain_mean"] == pytest.approx(float(gain.mean()))
    assert row["layers/layer0.ln_mlp.gain_std"] == pytest.approx(float(gain.std()))
    assert row["layers/ln_final.bias_max_abs"] == pytest.approx(float(bias.abs().max()))


def test_layers_nonfinite_matrix_gives_nan_for_it_only(tmp_path):
    tensors = neox_tensors(4)
    tensors["gpt_neox.layers.0.attention.dense.weight"][1, 1] = math.inf
    row = row_of(tmp_path, tensors, ("layers",))
    assert row["flag/nonfinite"] == 1
    assert math.isnan(row["layers/layer0.attn_out.spectral"])
    assert math.isfinite(row["layers/layer1.attn_out.spectral"])


# ----------------------------------------------------------------- qk/


def direct_qk_norms(tensors, layer):
    weight = tensors[f"gpt_neox.layers.{layer}.attention.query_key_value.weight"].double()
    gain = tensors[f"gpt_neox.layers.{layer}.input_layernorm.weight"].double()
    head_size = HIDDEN // HEADS
    norms = []
    for head in range(HEADS):
        rows = weight[head * 3 * head_size:(head + 1) * 3 * head_size]
        query, key = rows[:head_size], rows[head_size:2 * head_size]
        bilinear = torch.diag(gain) @ query.T @ key @ torch.diag(gain) / math.sqrt(head_size)
        norms.append(float(torch.linalg.matrix_norm(bilinear, ord=2)))
    return norms


def test_qk_matches_direct_bilinear_form(tmp_path):
    tensors = neox_tensors(5)
    row = row_of(tmp_path, tensors, ("qk",))
    everything = []
    for layer in range(LAYERS):
        norms = direct_qk_norms(tensors, layer)
        everything += norms
        assert row[f"qk/layer{layer}.spectral_max"] == pytest.approx(max(norms), rel=1e-9)
        assert row[f"qk/layer{layer}.spectral_mean"] == pytest.approx(np.mean(norms), rel=1e-9)
    assert row["qk/spectral_max"] == pytest.approx(max(everything), rel=1e-9)
    assert row["qk/spectral_mean"] == pytest.approx(np.mean(everything), rel=1e-9)


def test_qk_skipped_without_head_count(tmp_path, caplog):
    folder = write_checkpoint(tmp_path / "run" / "step0", neox_tensors(6), config={})
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.WARNING, logger="trainmap"):
        table, summary = extract_runs([load_run(folder.parent)], families=("qk",), progress=False)
    assert not any(column.startswith("qk/") for column in table.columns)
    assert any(family == "qk" and "num_attention_heads" in reason for family, reason in summary.families_skipped)
    assert "feature family qk/ skipped" in caplog.text


def test_qk_head_count_mismatch_gives_nan(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trainmap"):
        row = row_of(tmp_path, neox_tensors(7), ("qk",), config={"num_attention_heads": 5})
    assert math.isnan(row["qk/layer0.spectral_max"])
    assert "not a multiple of 3 x 5 heads" in caplog.text


# ----------------------------------------------------------------- unembed/ and scale/


def test_unembed_matches_direct_computation(tmp_path):
    tensors = neox_tensors(8)
    row = row_of(tmp_path, tensors, ("unembed",))
    unembedding = tensors["embed_out.weight"].double()
    norms = unembedding.norm(dim=1)
    gain = tensors["gpt_neox.final_layer_norm.weight"].double()
    assert row["unembed/row_norm_mean"] == pytest.approx(float(norms.mean()), rel=1e-6)
    assert row["unembed/row_norm_std"] == pytest.approx(float(norms.std()), rel=1e-5)
    assert row["unembed/row_norm_max"] == pytest.approx(float(norms.max()), rel=1e-6)
    assert row["unembed/mean_row_norm"] == pytest.approx(float(unembedding.mean(dim=0).norm()), rel=1e-5)
    assert row["unembed/final_ln_gain_mean"] == pytest.approx(float(gain.mean()))
    assert row["unembed/final_ln_gain_max_abs"] == pytest.approx(float(gain.abs().max()))


def test_scale_matches_direct_computation(tmp_path):
    tensors = neox_tensors(9)
    row = row_of(tmp_path, tensors, ("scale",))
    embed_rms = float(tensors["gpt_neox.embed_in.weight"].double().pow(2).mean().sqrt())
    spectral = {(layer, module): float(torch.linalg.matrix_norm(tensors[name].double(), ord=2))
                for layer in range(LAYERS)
                for module, name in (("attn_out", f"gpt_neox.layers.{layer}.attention.dense.weight"),
                                     ("mlp_out", f"gpt_neox.layers.{layer}.mlp.dense_4h_to_h.weight"))}
    assert row["scale/embed_rms"] == pytest.approx(embed_rms, rel=1e-6)
    assert row["scale/layer1.attn_out_to_embed"] == pytest.approx(spectral[(1, "attn_out")] / embed_rms, rel=1e-5)
    expected_max = max(spectral[(layer, "mlp_out")] for layer in range(LAYERS)) / embed_rms
    assert row["scale/mlp_out_to_embed_max"] == pytest.approx(expected_max, rel=1e-5)


def test_scale_spread_over_layer_matrices(tmp_path):
    tensors = neox_tensors(10)
    row = row_of(tmp_path, tensors, ("scale",))
    names = [name for name in tensors if ".layers." in name and name.endswith("weight") and "layernorm" not in name]
    frobenius = np.array([float(tensors[name].double().norm()) for name in names])
    spectral = np.array([float(torch.linalg.matrix_norm(tensors[name].double(), ord=2)) for name in names])
    assert row["scale/frobenius_cv"] == pytest.approx(frobenius.std(ddof=1) / frobenius.mean(), rel=1e-5)
    assert row["scale/spectral_max_to_min"] == pytest.approx(spectral.max() / spectral.min(), rel=1e-5)


# ----------------------------------------------------------------- dynamics/


def flat(tensors, predicate=lambda name: True):
    return torch.cat([value.double().flatten() for name, value in tensors.items() if predicate(name)])


def test_dynamics_match_direct_computation(tmp_path):
    states = write_run(tmp_path / "run", [0, 4, 10])
    table, _ = extract_runs([load_run(tmp_path / "run")], families=("dynamics",), progress=False)
    row = table[table["step"] == 10].iloc[0]
    is_qkv = lambda name: "query_key_value" in name  # noqa: E731
    current, previous, initial = (flat(states[step], is_qkv) for step in (10, 4, 0))
    cosine = float(current @ previous / (current.norm() * previous.norm()))
    assert row["dynamics/attn_qkv.update_rate"] == pytest.approx(
        float((current - previous).norm() / previous.norm()) / 6, rel=1e-5)
    assert row["dynamics/attn_qkv.cos_prev"] == pytest.approx(cosine, abs=1e-7)
    assert row["dynamics/attn_qkv.dist_init"] == pytest.approx(
        float((current - initial).norm() / initial.norm()), rel=1e-5)
    everything = [flat(states[step]) for step in (10, 0)]
    assert row["dynamics/all.cos_init"] == pytest.approx(
        float(everything[0] @ everything[1] / (everything[0].norm() * everything[1].norm())), abs=1e-7)


def test_dynamics_at_step_zero(tmp_path):
    write_run(tmp_path / "run", [0, 4])
    table, _ = extract_runs([load_run(tmp_path / "run")], families=("dynamics",), progress=False)
    row = table[table["step"] == 0].iloc[0]
    assert row["dynamics/all.dist_init"] == 0.0
    assert row["dynamics/all.cos_init"] == 1.0
    assert math.isnan(row["dynamics/all.update_rate"])


def test_dynamics_are_causal(tmp_path):
    run = tmp_path / "run"
    write_run(run, [0, 2, 5, 9])
    families = ("hu", "dynamics", "layers")
    before, _ = extract_runs([load_run(run)], families=families, progress=False)
    changed = neox_tensors(99)  # a different step 9, and a new later step
    write_checkpoint(run / "step9", changed)
    write_checkpoint(run / "step12", changed)
    after, _ = extract_runs([load_run(run)], families=families, progress=False)
    for step in (0, 2, 5):
        old = before[before["step"] == step].iloc[0]
        new = after[after["step"] == step].iloc[0]
        assert old.equals(new), step
    assert not before[before["step"] == 9].iloc[0].equals(after[after["step"] == 9].iloc[0])


def test_dynamics_without_step_zero(tmp_path):
    write_run(tmp_path / "run", [3, 6])
    table, summary = extract_runs([load_run(tmp_path / "run")], families=("dynamics",), progress=False)
    assert "dynamics/all.dist_init" not in table.columns
    assert table.loc[table["step"] == 6, "dynamics/all.update_rate"].notna().all()
    assert summary.families_skipped[("dynamics", "the run has no earlier checkpoint and no step-0 checkpoint")] == 1


def test_dynamics_unreadable_previous_checkpoint(tmp_path, caplog):
    run = tmp_path / "run"
    write_run(run, [0, 4, 8])
    (run / "step4" / "model.safetensors").write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING, logger="trainmap"):
        table, _ = extract_runs([load_run(run)], families=("dynamics",), progress=False)
    row = table[table["step"] == 8].iloc[0]
    assert not row["flag/unreadable"]
    assert math.isnan(row["dynamics/all.update_rate"])
    assert row["dynamics/all.dist_init"] > 0
    assert "cannot read" in caplog.text


# ----------------------------------------------------------------- other architectures


def gpt2_tensors(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "transformer.wte.weight": torch.randn(VOCAB, HIDDEN, generator=generator),
        "transformer.h.0.ln_1.weight": torch.ones(HIDDEN),
        "transformer.h.0.attn.c_attn.weight": torch.randn(HIDDEN, 3 * HIDDEN, generator=generator),
        "transformer.h.0.attn.c_attn.bias": torch.randn(3 * HIDDEN, generator=generator),
        "transformer.h.0.mlp.c_fc.weight": torch.randn(HIDDEN, 4 * HIDDEN, generator=generator),
    }


def test_other_architecture_degrades_gracefully(tmp_path, caplog):
    run = tmp_path / "gpt2"
    write_checkpoint(run / "step0", gpt2_tensors(0), config={"n_head": HEADS})
    write_checkpoint(run / "step5", gpt2_tensors(1), config={"n_head": HEADS})
    with caplog.at_level(logging.WARNING, logger="trainmap"):
        table, summary = extract_runs([load_run(run)], families=TENSOR_FAMILIES, progress=False)
    skipped = {family for family, reason in summary.families_skipped if reason == NOT_GPT_NEOX}
    assert skipped == {"layers", "qk", "unembed", "scale"}
    assert table["hu/lambda_max"].notna().all()
    assert table.loc[table["step"] == 5, "dynamics/all.update_rate"].notna().all()
    assert not any(column.startswith(("layers/", "qk/", "scale/")) for column in table.columns)
    assert caplog.text.count("feature family layers/ skipped") == 1
    assert any("feature family qk/ skipped for 2 checkpoint(s)" in line for line in summary.lines())


def test_all_families_on_trained_runs(micro_runs):
    from trainmap.checkpoints import find_runs

    table, summary = extract_runs(find_runs(micro_runs)[:2], families=ALL_FAMILIES, progress=False)
    for prefix in ("hu/", "layers/", "qk/", "unembed/", "scale/", "dynamics/", "loss/"):
        assert any(column.startswith(prefix) for column in table.columns), prefix
    assert not summary.families_skipped
