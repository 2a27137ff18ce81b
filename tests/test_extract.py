import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainmap.checkpoints import CheckpointError, find_runs, load_run
from trainmap.features import extract_runs, read_table, write_table
from trainmap.features.hu import FEATURES as HU_FEATURES
from trainmap.features.losses import loss_features, read_metrics


@pytest.fixture
def run_copy(micro_runs, tmp_path):
    """A writable copy of micro run seed0 under tmp_path/runs/seed0."""
    target = tmp_path / "runs" / "seed0"
    shutil.copytree(micro_runs / "seed0", target)
    return target


def test_table_has_one_row_per_checkpoint(micro_table, micro_runs):
    table, _ = micro_table
    expected = sum(len(run.checkpoints) for run in find_runs(micro_runs))
    assert len(table) == expected


def test_table_columns(micro_table):
    table, _ = micro_table
    assert {"run", "step", "hu/L2", "loss/eval", "flag/nonfinite"} <= set(table.columns)


def test_steps_sort_numerically(run_copy):
    shutil.copytree(run_copy / "step4", run_copy / "step100")
    shutil.copytree(run_copy / "step4", run_copy / "step20")
    steps = load_run(run_copy).steps
    assert steps == sorted(steps)
    assert steps.index(20) < steps.index(100)


def test_unparsable_step_folder_is_skipped(run_copy):
    shutil.copytree(run_copy / "step4", run_copy / "step-final")
    assert all(isinstance(step, int) for step in load_run(run_copy).steps)
    assert len(load_run(run_copy).steps) == 8


def test_nonfinite_checkpoint_is_flagged(run_copy):
    path = run_copy / "step12" / "model.safetensors"
    tensors = load_file(path)
    tensors["gpt_neox.layers.0.attention.dense.weight"][0, :3] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    table, summary = extract_runs([load_run(run_copy)], progress=False)
    row = table[table["step"] == 12].iloc[0]
    assert row["flag/nonfinite"] == 3
    assert math.isnan(row["hu/L2"])
    assert summary.flagged["nonfinite"] == 1


def test_extraction_goes_on_after_bad_checkpoint(run_copy):
    (run_copy / "step12" / "model.safetensors").write_bytes(b"not a safetensors file")
    table, summary = extract_runs([load_run(run_copy)], progress=False)
    assert bool(table.loc[table["step"] == 12, "flag/unreadable"].iloc[0])
    assert table.loc[table["step"] == 24, "hu/L2"].notna().all()
    assert summary.read == 7


def test_incomplete_checkpoint_is_flagged_and_skipped(run_copy):
    (run_copy / "step12" / "model.safetensors").unlink()
    table, summary = extract_runs([load_run(run_copy)], progress=False)
    assert bool(table.loc[table["step"] == 12, "flag/incomplete"].iloc[0])
    assert summary.skipped[0][0].endswith("step12")


def test_missing_shard_stops_with_names(run_copy):
    index = {"metadata": {}, "weight_map": {"embed_out.weight": "model-00001-of-00002.safetensors",
                                            "gpt_neox.embed_in.weight": "model-00002-of-00002.safetensors"}}
    (run_copy / "step12" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors, model-00002-of-00002.safetensors"):
        extract_runs([load_run(run_copy)], progress=False)


def test_sharded_checkpoint_gives_same_row(run_copy, micro_table):
    table, _ = micro_table
    tensors = load_file(run_copy / "step24" / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    (run_copy / "step24" / "model.safetensors").unlink()
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, run_copy / "step24" / shard)
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (run_copy / "step24" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded, _ = extract_runs([load_run(run_copy)], progress=False)
    original = table[(table["run"] == "seed0") & (table["step"] == 24)].iloc[0]
    for feature in HU_FEATURES:
        assert sharded.loc[sharded["step"] == 24, feature].iloc[0] == pytest.approx(original[feature], rel=1e-12)


def test_loss_features_are_causal():
    series = {"train_loss": {1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0}, "eval_loss": {0: 5.0, 2: 3.5, 4: 1.5}}
    features = loss_features(series, [0, 2, 4])
    assert features[2]["loss/train_mean"] == 3.5
    assert features[4]["loss/train_mean"] == 1.5
    assert math.isnan(features[0]["loss/train"])


def test_truncated_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_lo')
    assert read_metrics(path)["train_loss"] == {1: 2.0}


def test_table_round_trip(micro_table, tmp_path):
    table, _ = micro_table
    path = write_table(table, tmp_path / "t.parquet")
    assert read_table(path).equals(table)


def test_read_table_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainmap extract"):
        read_table(tmp_path / "absent.parquet")


def test_find_runs_names_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no runs found"):
        find_runs(tmp_path)
