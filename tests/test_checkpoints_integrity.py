"""Every checkpoint defect gives its documented flag or error."""

import hashlib
import json
import math
import shutil

import pytest
import torch

import checkpoint_writers as writers
from trainmap.checkpoints import CheckpointError, file_hash, find_gaps, load_run, open_checkpoint
from trainmap.features import extract_runs
from trainmap.features.extract import extract_checkpoint
from trainmap.features.hu import FEATURES as HU_FEATURES


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return writers.tiny_gpt_neox(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    return writers.tiny_gpt_neox(tmp_path_factory.mktemp("tiny"), seed=1)


def extract(run_path, families=("hu",)):
    return extract_runs([load_run(run_path)], families=families, progress=False)


def row_at(table, step):
    return table[table["step"] == step].iloc[0]


def test_duplicate_step_names_the_other_step(weights, other_weights, tmp_path):
    run = tmp_path / "run"
    writers.write_safetensors(run / "step1", weights)
    writers.write_safetensors(run / "step2", other_weights)
    shutil.copytree(run / "step1", run / "step3")
    table, summary = extract(run)
    assert row_at(table, 3)["flag/duplicate_of"] == 1
    assert row_at(table, 1)["flag/duplicate_of"] == 3
    assert row_at(table, 2)["flag/duplicate_of"] == -1
    assert summary.flagged["duplicate"] == 2


def test_same_as_final_is_flagged(weights, other_weights, tmp_path):
    run = tmp_path / "run"
    writers.write_safetensors(run / "step1", other_weights)
    writers.write_safetensors(run / "step2", weights)
    writers.write_safetensors(run / "step4", weights)
    table, summary = extract(run)
    assert bool(row_at(table, 2)["flag/same_as_final"])
    assert not bool(row_at(table, 4)["flag/same_as_final"])
    assert not bool(row_at(table, 1)["flag/same_as_final"])
    assert summary.flagged["same_as_final"] == 1


def test_same_as_final_beyond_max_step(weights, other_weights, tmp_path):
    run = tmp_path / "run"
    writers.write_safetensors(run / "step1", weights)
    writers.write_safetensors(run / "step2", other_weights)
    writers.write_safetensors(run / "step4", weights)
    table, _ = extract_runs([load_run(run)], families=("hu",), max_step=2, progress=False)
    assert bool(row_at(table, 1)["flag/same_as_final"])


def test_identical_files_of_different_names_share_digest(weights, tmp_path):
    run = tmp_path / "run"
    writers.write_torch_file(run / "step1.pt", dict(weights))
    shutil.copy(run / "step1.pt", run / "step2.pt")
    table, _ = extract(run)
    assert row_at(table, 2)["flag/duplicate_of"] == 1
    assert row_at(table, 1)["flag/digest"] == row_at(table, 2)["flag/digest"]


def test_file_hash_is_sha256(weights, tmp_path):
    folder = writers.write_safetensors(tmp_path / "step1", weights)
    data = (folder / "model.safetensors").read_bytes()
    assert file_hash(folder / "model.safetensors") == hashlib.sha256(data).hexdigest()


def test_reader_exposes_file_hashes(weights, tmp_path):
    folder = writers.write_safetensors_sharded(tmp_path / "run" / "step1", weights)
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert set(reader.file_hashes) == {path.name for path in folder.glob("model-*.safetensors")}
    assert len(reader.digest) == 64


def test_background_hash_equals_direct_hash(weights, tmp_path):
    writers.write_safetensors_sharded(tmp_path / "run" / "step1", weights)
    ref = load_run(tmp_path / "run").checkpoints[0]
    background = open_checkpoint(ref)
    background.start_hashing()
    list(background.tensors())
    assert background.file_hashes == open_checkpoint(ref).file_hashes


def test_gap_is_recorded_not_an_error(weights, tmp_path):
    run = tmp_path / "run"
    for step in (0, 1, 2, 4, 10, 20, 40, 50, 60):  # step 30 is missing
        writers.write_safetensors(run / f"step{step}", weights)
    table, summary = extract(run)
    assert row_at(table, 40)["flag/gap_before"] == 1
    assert row_at(table, 20)["flag/gap_before"] == 0
    assert summary.gaps == {"run": [30]}
    assert "missing scheduled steps 30" in "\n".join(summary.lines())


@pytest.mark.parametrize(("steps", "gaps"), [
    ([0, 1, 2, 4, 6, 12, 18, 24], []),
    ([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 10001, 1000)], []),
    ([0, 1, 2, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 5000, 6000, 7000], [4, 3000]),
    ([0, 1, 2, 8], [4]),
    ([0, 100, 300, 400], [200]),
    ([0, 5, 9, 30], []),
    ([7], []),
])
def test_find_gaps(steps, gaps):
    assert find_gaps(steps) == gaps


def test_incomplete_checkpoint_is_skipped_and_run_goes_on(weights, tmp_path):
    run = tmp_path / "run"
    writers.write_safetensors(run / "step1", weights)
    (run / "step2").mkdir()
    (run / "step2" / "config.json").write_text("{}")
    writers.write_safetensors(run / "step3", weights)
    table, summary = extract(run)
    assert bool(row_at(table, 2)["flag/incomplete"])
    assert summary.skipped[0][0].endswith("step2")
    assert table.loc[table["step"] == 3, "hu/L2"].notna().all()
    assert summary.read == 2


def test_empty_weight_file_is_incomplete(weights, tmp_path):
    run = tmp_path / "run"
    writers.write_safetensors(run / "step1", weights)
    (run / "step2").mkdir()
    (run / "step2" / "model.safetensors").write_bytes(b"")
    table, _ = extract(run)
    assert bool(row_at(table, 2)["flag/incomplete"])


def test_nonfinite_values_are_counted_per_tensor(weights, tmp_path, monkeypatch):
    damaged = dict(weights)
    damaged["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"] = damaged["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"].clone()
    damaged["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"][0, :2] = float("inf")
    damaged["gpt_neox.layers.0.attention.dense.bias"] = damaged["gpt_neox.layers.0.attention.dense.bias"].clone()
    damaged["gpt_neox.layers.0.attention.dense.bias"][3] = float("nan")
    writers.write_safetensors(tmp_path / "run" / "step1", damaged)

    def finite_only(function):
        def checked(matrix, *args, **kwargs):
            assert torch.isfinite(matrix).all(), "linear algebra called on non-finite input"
            return function(matrix, *args, **kwargs)
        return checked

    for name in ("eigvalsh", "eigh", "svd", "svdvals", "matrix_norm"):
        monkeypatch.setattr(torch.linalg, name, finite_only(getattr(torch.linalg, name)))
    table, summary = extract(tmp_path / "run")
    row = table.iloc[0]
    assert row["flag/nonfinite"] == 3
    assert row["flag/nonfinite_tensors"] == (
        "gpt_neox.layers.0.attention.dense.bias=1;gpt_neox.layers.1.mlp.dense_h_to_4h.weight=2")
    assert all(math.isnan(row[feature]) for feature in HU_FEATURES)
    assert summary.flagged["nonfinite"] == 1


def old_export(weights):
    """The weights plus the buffers old GPT-NeoX exports carry."""
    tensors = dict(weights)
    for block in range(writers.LAYERS):
        prefix = f"gpt_neox.layers.{block}.attention."
        tensors[prefix + "bias"] = torch.tril(torch.ones(1, 1, 32, 32, dtype=torch.bool))
        tensors[prefix + "masked_bias"] = torch.tensor(-1e9)
        tensors[prefix + "rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, 2, 2).float() / 2))
    return tensors


def test_buffers_are_skipped_and_listed(weights, tmp_path):
    writers.write_safetensors(tmp_path / "run" / "step1", old_export(weights))
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert reader.names() == sorted(weights)
    assert reader.buffers == sorted(set(old_export(weights)) - set(weights))
    assert reader.flags()["flag/buffers"] == 3 * writers.LAYERS


def test_buffers_leave_features_unchanged(weights, tmp_path):
    writers.write_safetensors(tmp_path / "clean" / "step1", weights)
    writers.write_safetensors(tmp_path / "old" / "step1", old_export(weights))
    clean = extract_checkpoint(load_run(tmp_path / "clean").checkpoints[0], ("hu",))
    old = extract_checkpoint(load_run(tmp_path / "old").checkpoints[0], ("hu",))
    for feature in HU_FEATURES:
        assert old[feature] == pytest.approx(clean[feature], rel=1e-12), feature


def test_buffer_only_difference_is_no_architecture_change(weights, tmp_path):
    writers.write_safetensors(tmp_path / "run" / "step1", old_export(weights))
    writers.write_safetensors(tmp_path / "run" / "step2", weights)
    table, summary = extract(tmp_path / "run")
    assert row_at(table, 2)["flag/architecture_change"] == ""
    assert summary.flagged["architecture_change"] == 0


def test_architecture_change_is_flagged(weights, tmp_path):
    changed = dict(weights)
    changed["gpt_neox.layers.0.mlp.extra.weight"] = torch.ones(4, 4)
    changed["embed_out.weight"] = torch.ones(8, 16)
    writers.write_safetensors(tmp_path / "run" / "step1", weights)
    writers.write_safetensors(tmp_path / "run" / "step2", changed)
    table, summary = extract(tmp_path / "run")
    assert row_at(table, 2)["flag/architecture_change"] == (
        "added gpt_neox.layers.0.mlp.extra.weight; reshaped embed_out.weight")
    assert summary.flagged["architecture_change"] == 1


def test_shared_storage_is_counted_once(weights, tmp_path):
    tensors = dict(weights)
    tensors["embed_out.weight"] = tensors["gpt_neox.embed_in.weight"]  # one storage, two keys
    writers.write_torch_file(tmp_path / "run" / "step1.pt", tensors)
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert reader.ties == {"embed_out.weight": "gpt_neox.embed_in.weight"}
    assert "embed_out.weight" not in reader.names()
    assert reader.flags()["flag/tied"] == "embed_out.weight=gpt_neox.embed_in.weight"


def test_tied_key_missing_from_file_is_filled(tmp_path):
    tensors = writers.tiny_gpt_neox(tmp_path / "run" / "step1", tie=True)
    assert "embed_out.weight" not in tensors
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert reader.ties == {"embed_out.weight": "gpt_neox.embed_in.weight"}
    filled = dict(reader.tensors(["embed_out.weight"]))
    assert torch.equal(filled["embed_out.weight"], tensors["gpt_neox.embed_in.weight"])
    assert "embed_out.weight" in reader.parameters()


def test_missing_bin_shards_are_named(weights, tmp_path):
    folder = writers.write_bin_sharded(tmp_path / "run" / "step1", weights)
    for shard in folder.glob("pytorch_model-*.bin"):
        shard.unlink()
    with pytest.raises(CheckpointError, match=(
            r"pytorch_model-00001-of-00002\.bin, pytorch_model-00002-of-00002\.bin listed in "
            r"pytorch_model\.bin\.index\.json")):
        extract(tmp_path / "run")


def test_invalid_index_is_an_error(weights, tmp_path):
    folder = writers.write_safetensors_sharded(tmp_path / "run" / "step1", weights)
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        extract(tmp_path / "run")


def test_zero3_placeholders_are_an_error(weights, tmp_path):
    placeholders = {name: torch.empty(0, dtype=value.dtype) for name, value in weights.items()}
    folder = tmp_path / "run" / "global_step10"
    folder.mkdir(parents=True)
    torch.save({"module": placeholders, "buffer_names": [], "param_shapes": [{n: v.shape for n, v in weights.items()}]},
               folder / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="ZeRO-3 .* zero_to_fp32.py"):
        extract(tmp_path / "run")


def test_deepspeed_buffer_names_are_skipped(weights, tmp_path):
    tensors = dict(weights)
    tensors["gpt_neox.layers.0.attention.scale_buffer"] = torch.ones(3)
    writers.write_deepspeed(tmp_path / "run" / "global_step1", tensors,
                            buffer_names=["gpt_neox.layers.0.attention.scale_buffer"])
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    assert reader.buffers == ["gpt_neox.layers.0.attention.scale_buffer"]


def test_summary_lists_flags_and_reasons(weights, tmp_path):
    run = tmp_path / "run"
    writers.write_safetensors(run / "step1", weights)
    shutil.copytree(run / "step1", run / "step2")
    (run / "step3").mkdir()
    _, summary = extract(run)
    text = "\n".join(summary.lines())
    assert "checkpoints: 3 (3 extracted now, 0 from the cache), 2 read without errors" in text
    assert "duplicate: 2" in text
    assert "incomplete: 1" in text
    assert "step3: no weight file" in text


def test_extract_table_has_every_flag_column(weights, tmp_path):
    from trainmap.features.extract import FLAGS

    writers.write_safetensors(tmp_path / "run" / "step1", weights)
    table, _ = extract(tmp_path / "run")
    assert set(FLAGS) <= set(table.columns)
    assert json.loads(json.dumps(table[list(FLAGS)].iloc[0].tolist(), default=str))
