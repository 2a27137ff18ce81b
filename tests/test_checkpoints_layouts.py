"""Every checkpoint layout gives the same feature row for the same weights."""

import json
import logging
import math

import pytest
import torch

import checkpoint_writers as writers
from trainmap.checkpoints import load_run, open_checkpoint
from trainmap.checkpoints.discover import parse_step
from trainmap.features import extract_runs
from trainmap.features.extract import extract_checkpoint
from trainmap.features.hu import FEATURES as HU_FEATURES


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tensors of one tiny GPT-NeoX, Hugging Face names, float32."""
    return writers.tiny_gpt_neox(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference_row(weights, tmp_path_factory):
    """The hu/ row of the weights stored as a single model.safetensors."""
    run = tmp_path_factory.mktemp("reference") / "run"
    writers.write_safetensors(run / "step100", weights)
    return extract_checkpoint(load_run(run).checkpoints[0], ("hu",))


LAYOUTS = {
    "safetensors": ("step100", lambda path, w: writers.write_safetensors(path, w)),
    "safetensors-sharded": ("step100", lambda path, w: writers.write_safetensors_sharded(path, w)),
    "pytorch-bin": ("step100", lambda path, w: writers.write_bin(path, w)),
    "pytorch-bin-sharded": ("step100", lambda path, w: writers.write_bin_sharded(path, w)),
    "trainer": ("checkpoint-100", lambda path, w: writers.write_trainer_checkpoint(path, w, 100, [])),
    "deepspeed": ("global_step100", lambda path, w: writers.write_deepspeed(path, w)),
    "trainer-deepspeed": ("checkpoint-100", lambda path, w: writers.write_deepspeed(path / "global_step100", w)),
    "neox-layers": ("global_step100", lambda path, w: writers.write_neox_layers(path, w)),
    "neox-layers-rmsnorm": ("global_step100", lambda path, w: writers.write_neox_layers(path, w, rmsnorm=True)),
    "safetensors-file": ("step100.safetensors", lambda path, w: writers.write_safetensors_file(path, w)),
    "pt-file": ("step100.pt", lambda path, w: writers.write_torch_file(path, dict(w))),
    "pth-file": ("model_step_100.pth", lambda path, w: writers.write_torch_file(path, dict(w))),
    "bin-file": ("checkpoint-100.bin", lambda path, w: writers.write_torch_file(path, dict(w))),
    "lightning": ("epoch=0-step=100.ckpt", lambda path, w: writers.write_torch_file(
        path, {"state_dict": writers.prefixed(w, "model."), "global_step": 100, "epoch": 0})),
    "wrapped-model": ("step100.pt", lambda path, w: writers.write_torch_file(path, {"model": dict(w)})),
    "wrapped-state-dict": ("step100.pt", lambda path, w: writers.write_torch_file(path, {"state_dict": dict(w)})),
    "wrapped-module": ("step100.pt", lambda path, w: writers.write_torch_file(path, {"module": dict(w)})),
    "compiled": ("step100.pt", lambda path, w: writers.write_torch_file(
        path, {"model": writers.prefixed(w, "_orig_mod."), "step": 100})),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_gives_reference_row(layout, weights, reference_row, tmp_path):
    entry, write = LAYOUTS[layout]
    write(tmp_path / "run" / entry, weights)
    run = load_run(tmp_path / "run")
    assert run.steps == [100]
    row = extract_checkpoint(run.checkpoints[0], ("hu",))
    assert not row["flag/unreadable"], row["flag/error"]
    for feature in HU_FEATURES:
        assert row[feature] == pytest.approx(reference_row[feature], rel=1e-12, nan_ok=True), feature


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_keeps_parameter_names(layout, weights, tmp_path):
    entry, write = LAYOUTS[layout]
    write(tmp_path / "run" / entry, weights)
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert reader.names() == sorted(weights)


def test_layout_names_are_recorded(weights, tmp_path):
    expected = {"step1": "safetensors-sharded", "step2": "pytorch-bin", "global_step3": "neox-layers",
                "global_step4": "deepspeed", "step5.ckpt": "torch-file", "step6.safetensors": "safetensors-file"}
    writers.write_safetensors_sharded(tmp_path / "run" / "step1", weights)
    writers.write_bin(tmp_path / "run" / "step2", weights)
    writers.write_neox_layers(tmp_path / "run" / "global_step3", weights)
    writers.write_deepspeed(tmp_path / "run" / "global_step4", weights)
    writers.write_torch_file(tmp_path / "run" / "step5.ckpt", {"state_dict": dict(weights)})
    writers.write_safetensors_file(tmp_path / "run" / "step6.safetensors", weights)
    for ref in load_run(tmp_path / "run").checkpoints:
        assert open_checkpoint(ref).layout == expected[ref.path.name], ref.path.name


def test_lightning_prefix_is_recorded(weights, tmp_path):
    path = writers.write_torch_file(tmp_path / "run" / "epoch=0-step=100.ckpt",
                                    {"state_dict": writers.prefixed(weights, "model."), "global_step": 100})
    row = extract_checkpoint(load_run(path.parent).checkpoints[0], ("hu",))
    assert row["flag/prefix"] == "model."


def test_nested_prefixes_strip_together(weights, tmp_path):
    path = writers.write_torch_file(tmp_path / "run" / "step1.pt", writers.prefixed(weights, "module._orig_mod."))
    reader = open_checkpoint(load_run(path.parent).checkpoints[0])
    assert reader.prefix == "module._orig_mod."
    assert reader.names() == sorted(weights)


def test_prefix_kept_when_one_key_lacks_it(weights, tmp_path):
    tensors = writers.prefixed(weights, "model.")
    tensors["lm_head.weight"] = tensors.pop("model.embed_out.weight")
    path = writers.write_torch_file(tmp_path / "run" / "step1.pt", tensors)
    reader = open_checkpoint(load_run(path.parent).checkpoints[0])
    assert reader.prefix == ""
    assert "model.gpt_neox.embed_in.weight" in reader.names()


def test_neox_blocks_follow_embedding_offset(weights, tmp_path):
    writers.write_neox_layers(tmp_path / "run" / "global_step7", weights)
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    block = dict(reader.tensors(["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"]))
    assert torch.equal(block["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"],
                       weights["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"])


def test_neox_rmsnorm_scale_becomes_weight(weights, tmp_path):
    writers.write_neox_layers(tmp_path / "run" / "global_step7", weights, rmsnorm=True)
    names = open_checkpoint(load_run(tmp_path / "run").checkpoints[0]).names()
    assert "gpt_neox.layers.0.input_layernorm.weight" in names
    assert "gpt_neox.final_layer_norm.weight" in names


def test_neox_missing_block_file_is_an_error(weights, tmp_path):
    from trainmap.checkpoints import CheckpointError

    writers.write_neox_layers(tmp_path / "run" / "global_step7", weights, skip_layers=(2,))
    with pytest.raises(CheckpointError, match="layer_02-model_00-model_states.pt"):
        open_checkpoint(load_run(tmp_path / "run").checkpoints[0])


def test_tensor_parallel_ranks_are_unreadable(weights, tmp_path):
    folder = writers.write_neox_layers(tmp_path / "run" / "global_step7", weights)
    (folder / "layer_00-model_01-model_states.pt").write_bytes((folder / "layer_00-model_00-model_states.pt").read_bytes())
    row = extract_checkpoint(load_run(tmp_path / "run").checkpoints[0], ("hu",))
    assert row["flag/unreadable"]
    assert "tensor-parallel" in row["flag/error"]


def test_trainer_steps_sort_numerically(weights, tmp_path):
    for step in (1000, 200, 30):
        writers.write_trainer_checkpoint(tmp_path / "run" / f"checkpoint-{step}", weights, step, [])
    assert load_run(tmp_path / "run").steps == [30, 200, 1000]


def test_trainer_state_sets_step(weights, tmp_path):
    writers.write_trainer_checkpoint(tmp_path / "run" / "checkpoint-100", weights, 120, [])
    assert load_run(tmp_path / "run").steps == [120]


def test_trainer_state_gives_loss_features(weights, tmp_path):
    history = [{"step": 50, "loss": 3.0}, {"step": 100, "loss": 2.0}, {"step": 100, "eval_loss": 2.5},
               {"step": 100, "train_loss": 9.9, "train_runtime": 1.0}]
    writers.write_trainer_checkpoint(tmp_path / "run" / "checkpoint-100", weights, 100, history)
    table, _ = extract_runs([load_run(tmp_path / "run")], progress=False)
    row = table.iloc[0]
    assert row["loss/train"] == 2.0
    assert row["loss/train_mean"] == 2.5
    assert row["loss/eval"] == 2.5


def test_unparsable_names_are_skipped(weights, tmp_path, caplog):
    writers.write_safetensors(tmp_path / "run" / "step100", weights)
    writers.write_safetensors(tmp_path / "run" / "checkpoint-best", weights)
    writers.write_safetensors(tmp_path / "run" / "step-final", weights)
    writers.write_torch_file(tmp_path / "run" / "last.ckpt", {"state_dict": dict(weights)})
    with caplog.at_level(logging.INFO, logger="trainmap.checkpoints"):
        steps = load_run(tmp_path / "run").steps
    assert steps == [100]
    for name in ("checkpoint-best", "step-final", "last.ckpt"):
        assert name in caplog.text


@pytest.mark.parametrize(("name", "is_file", "step"), [
    ("step1000", False, 1000),
    ("checkpoint-200", False, 200),
    ("global_step0030", False, 30),
    ("stepfinal", False, None),
    ("step1000.pt", True, 1000),
    ("epoch=2-step=4500.ckpt", True, 4500),
    ("model_step_7.pth", True, 7),
    ("checkpoint_12.bin", True, 12),
    ("timestep100.pt", True, None),
    ("last.ckpt", True, None),
])
def test_parse_step(name, is_file, step):
    assert parse_step(name, is_file) == step


def test_step_folder_wins_over_file(weights, tmp_path, caplog):
    writers.write_safetensors(tmp_path / "run" / "step100", weights)
    writers.write_torch_file(tmp_path / "run" / "step100.pt", dict(weights))
    run = load_run(tmp_path / "run")
    assert [ref.path.name for ref in run.checkpoints] == ["step100"]
    assert "step100.pt" in caplog.text


def test_low_precision_copies_match_exactly(weights, tmp_path):
    """Weights exactly representable in bf16 give identical rows from fp32, bf16 and fp16 files."""
    # Round once to bf16 and clamp away fp16 subnormals, so all three stores hold the same values.
    rounded = {}
    for name, value in weights.items():
        value = value.to(torch.bfloat16).float()
        rounded[name] = torch.where(value.abs() < 2 ** -14, torch.zeros_like(value), value)
    rows = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        folder = tmp_path / str(dtype).removeprefix("torch.")
        writers.write_safetensors(folder / "run" / "step1", {n: v.to(dtype) for n, v in rounded.items()})
        rows[dtype] = extract_checkpoint(load_run(folder / "run").checkpoints[0], ("hu",))
    assert rows[torch.bfloat16]["flag/dtype"] == "BF16"
    for dtype in (torch.bfloat16, torch.float16):
        for feature in HU_FEATURES:
            assert rows[dtype][feature] == pytest.approx(rows[torch.float32][feature], rel=1e-12), feature


# Signed features sum values of both signs and can sit near 0, so their error is
# measured against a magnitude of the same checkpoint instead of their own value.
SIGNED_FEATURE_SCALES = {
    "hu/trace": "hu/lambda_max",
    "hu/trace_lambda": None,
    "hu/mu_w": "hu/sigma_w",
    "hu/median_w": "hu/sigma_w",
    "hu/mu_b": "hu/sigma_b",
    "hu/median_b": "hu/sigma_b",
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rounding_stays_within_tolerance(dtype, weights, reference_row, tmp_path):
    """fp32 weights rounded to bf16 or fp16 keep hu/ features within the documented tolerance.

    Magnitudes agree to a relative 1e-3. Signed features agree to 1e-3 times their
    scale: lambda_max for the trace, 1 for trace/lambda_max, the standard deviation
    for means and medians.
    """
    writers.write_safetensors(tmp_path / "run" / "step100", {n: v.to(dtype) for n, v in weights.items()})
    row = extract_checkpoint(load_run(tmp_path / "run").checkpoints[0], ("hu",))
    for feature in HU_FEATURES:
        reference = reference_row[feature]
        if feature not in SIGNED_FEATURE_SCALES:
            assert row[feature] == pytest.approx(reference, rel=1e-3), feature
            continue
        scale_feature = SIGNED_FEATURE_SCALES[feature]
        scale = 1.0 if scale_feature is None else reference_row[scale_feature]
        if scale_feature in ("hu/sigma_w", "hu/sigma_b"):
            scale = math.sqrt(scale)  # sigma_* are variances
        assert abs(row[feature] - reference) <= 1e-3 * scale, feature


def test_index_json_lists_shard_names(weights, tmp_path):
    folder = writers.write_bin_sharded(tmp_path / "run" / "step1", weights)
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert set(reader.files.values()) == {folder / shard for shard in index["weight_map"].values()}
