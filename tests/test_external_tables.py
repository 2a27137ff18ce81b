"""Feature tables made by other tools: CSV and TSV with their own column names."""

import json

import pytest

from trainmap.cli import main
from trainmap.features import read_table


@pytest.fixture
def external_csv(micro_table, tmp_path):
    """The micro table as another tool might write it: CSV, run_id/iteration, no slashes."""
    table, _ = micro_table
    columns = {"run": "run_id", "step": "iteration", "hu/L2": "weight_norm", "hu/lambda_max": "top_sv",
               "loss/train": "train_loss", "loss/eval": "val_loss"}
    frame = table[list(columns)].rename(columns=columns)
    path = tmp_path / "metrics.csv"
    frame.to_csv(path, index=False)
    return path


def test_read_csv_with_named_columns(external_csv):
    table = read_table(external_csv, run_column="run_id", step_column="iteration")
    assert {"run", "step", "weight_norm"} <= set(table.columns)


def test_read_tsv(micro_table, tmp_path):
    table, _ = micro_table
    path = tmp_path / "features.tsv"
    table.to_csv(path, sep="\t", index=False)
    assert read_table(path)["hu/L2"].tolist() == table["hu/L2"].tolist()


def test_missing_run_column_names_option(external_csv):
    with pytest.raises(ValueError, match="--run-column"):
        read_table(external_csv)


def test_unknown_suffix_is_rejected(tmp_path):
    path = tmp_path / "features.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match="use .parquet, .csv or .tsv"):
        read_table(path)


def test_train_and_score_external_table(external_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    keys = ["--run-column", "run_id", "--step-column", "iteration"]
    detector = tmp_path / "models" / "external"
    assert main(["train", str(external_csv), *keys, "--label-metric", "val_loss",
                 "--horizon", "6", "-o", str(detector)]) == 0
    capsys.readouterr()
    assert main(["score", "--table", str(external_csv), "--run", "seed7", *keys,
                 "--detector", str(detector), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run"] == "seed7"
    assert result["horizon"] == 6
