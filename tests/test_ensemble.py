import hashlib
import json
import platform

import pytest
import torch
from safetensors.torch import load_file

from conftest import micro_config
from trainmap.checkpoints import find_runs
from trainmap.ensemble import EnsembleConfig, train_ensemble
from trainmap.ensemble.corpus import VOCAB_SIZE, corpus_bytes, split_corpus


def test_corpus_is_real_text():
    data = corpus_bytes()
    assert len(data) > 400_000
    assert b"for_stmt" in data or b"The for statement" in data


def test_split_keeps_heldout_tail():
    train, heldout = split_corpus(0.1)
    assert len(heldout) == pytest.approx(0.1 * (len(train) + len(heldout)), rel=0.01)
    assert int(train.max()) < VOCAB_SIZE


def test_run_folder_layout(micro_runs):
    run = micro_runs / "seed0"
    assert (run / "step24" / "config.json").is_file()
    assert (run / "step24" / "model.safetensors").is_file()
    assert (run / "run.json").is_file()


def test_run_json_records_seed_and_status(micro_runs):
    record = json.loads((micro_runs / "seed3" / "run.json").read_text())
    assert record["seed"] == 3
    assert record["status"] == "complete"
    assert record["peak_learning_rate"] == 3.0
    assert record["checkpoint_steps"] == micro_config().checkpoint_steps()


def test_run_json_records_corpus_digest(micro_runs):
    corpus = json.loads((micro_runs / "seed3" / "run.json").read_text())["corpus"]
    assert corpus["source"] == "pydoc_data.topics"
    assert corpus["python"] == platform.python_version()
    assert corpus["bytes"] == len(corpus_bytes())
    assert corpus["sha256"] == hashlib.sha256(corpus_bytes()).hexdigest()


def test_metrics_have_train_loss_every_step(micro_runs):
    records = [json.loads(line) for line in (micro_runs / "seed0" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train_loss" in r]
    eval_steps = [r["step"] for r in records if "eval_loss" in r]
    assert train_steps == list(range(1, 25))
    assert eval_steps == micro_config().checkpoint_steps()


def test_checkpoints_are_gpt_neox(micro_runs):
    config = json.loads((micro_runs / "seed0" / "step0" / "config.json").read_text())
    assert config["model_type"] == "gpt_neox"
    assert config["vocab_size"] == VOCAB_SIZE


def test_seed_sets_initialisation(micro_runs):
    first = load_file(micro_runs / "seed0" / "step0" / "model.safetensors")
    second = load_file(micro_runs / "seed1" / "step0" / "model.safetensors")
    assert not torch.equal(first["gpt_neox.embed_in.weight"], second["gpt_neox.embed_in.weight"])


def test_same_seed_reproduces_run(micro_runs, tmp_path):
    train_ensemble(micro_config(seeds=1), tmp_path)
    again = load_file(tmp_path / "seed0" / "step24" / "model.safetensors")
    before = load_file(micro_runs / "seed0" / "step24" / "model.safetensors")
    assert all(torch.equal(again[name], before[name]) for name in before)


def test_complete_runs_are_kept(micro_runs, tmp_path):
    train_ensemble(micro_config(seeds=1), tmp_path)
    marker = tmp_path / "seed0" / "step0" / "keep.txt"
    marker.write_text("x")
    train_ensemble(micro_config(seeds=1), tmp_path)
    assert marker.exists()


def test_interrupted_run_is_retrained(tmp_path):
    config = micro_config(seeds=1)
    train_ensemble(config, tmp_path)
    record = json.loads((tmp_path / "seed0" / "run.json").read_text())
    record["status"] = "running"
    (tmp_path / "seed0" / "run.json").write_text(json.dumps(record))
    train_ensemble(config, tmp_path)
    assert json.loads((tmp_path / "seed0" / "run.json").read_text())["status"] == "complete"


def test_partial_save_is_not_a_checkpoint(micro_runs, tmp_path):
    import shutil

    run = tmp_path / "seed0"
    shutil.copytree(micro_runs / "seed0", run)
    (run / ".step30.partial-123").mkdir()
    runs = find_runs(tmp_path)
    assert 30 not in runs[0].steps


def test_config_rejects_indivisible_width():
    with pytest.raises(ValueError, match="width 30 is not divisible by heads 4"):
        EnsembleConfig(width=30, heads=4).validate()
