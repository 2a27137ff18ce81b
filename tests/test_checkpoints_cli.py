"""Checkpoint options of the command line: --trust-pickles, pull, and error messages."""

import argparse

import pytest

import checkpoint_writers as writers
from trainmap.cli import main
from trainmap.features import read_table


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return writers.tiny_gpt_neox(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite MLflow store for this module, so its schema is created once; returns its URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture
def namespace_run(weights, tmp_path):
    """A DeepSpeed run whose files carry an argparse.Namespace, as old Megatron saves do."""
    run = tmp_path / "runs" / "seed0"
    for step in (1, 2):
        writers.write_deepspeed(run / f"global_step{step}", weights, args=argparse.Namespace(lr=0.1))
    return run


def test_extract_without_trust_skips_with_reason(namespace_run, tmp_path, mlflow_store, capsys):
    output = tmp_path / "features.parquet"
    assert main(["extract", str(namespace_run), "-o", str(output), "--features", "hu"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints skipped: 2" in out
    assert "argparse.Namespace" in out
    assert "--trust-pickles" in out


def test_extract_with_trust_flags_rows(namespace_run, tmp_path, mlflow_store, capsys):
    from mlflow.tracking import MlflowClient

    output = tmp_path / "features.parquet"
    assert main(["extract", str(namespace_run), "-o", str(output), "--features", "hu", "--trust-pickles"]) == 0
    table = read_table(output)
    assert table["flag/trusted_pickle"].all()
    assert table["hu/L2"].notna().all()
    assert "trusted_pickle: 2" in capsys.readouterr().out

    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("trainmap").experiment_id
    run = client.search_runs(experiment, order_by=["attributes.start_time DESC"])[0]
    assert {item.path for item in client.list_artifacts(run.info.run_id)} >= {"integrity.json",
                                                                              "extraction_summary.json"}


def test_missing_shard_is_an_error_message(weights, tmp_path, mlflow_store, capsys):
    folder = writers.write_safetensors_sharded(tmp_path / "runs" / "seed0" / "step1", weights)
    (folder / "model-00002-of-00002.safetensors").unlink()
    assert main(["extract", str(tmp_path / "runs"), "-o", str(tmp_path / "f.parquet")]) == 2
    assert "missing shard(s) model-00002-of-00002.safetensors" in capsys.readouterr().err


def test_pull_offline_error_is_a_message(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    status = main(["pull", str(tmp_path / "runs"), "--size", "14m", "--seeds", "3", "--steps", "1000",
                   "--cache-dir", str(tmp_path / "cache"), "--offline"])
    assert status == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err


def test_score_accepts_trust_pickles():
    from trainmap.cli import build_parser

    args = build_parser().parse_args(["score", "runs/seed0", "--detector", "models/m", "--trust-pickles"])
    assert args.trust_pickles is True
