"""The committed reference table and detector load and score with the current code."""

import json
from pathlib import Path

import pytest

from trainmap.cli import main

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "features" / "reference-w64.parquet"
DETECTOR = ROOT / "models" / "reference-w64"


@pytest.mark.parametrize(("run", "outlier"), [("seed38", True), ("seed5", False)])
def test_reference_detector_scores_table_run(run, outlier, mlflow_store, capsys):
    args = ["score", "--table", str(TABLE), "--run", run, "--detector", str(DETECTOR), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["horizon"] == 75
    assert (result["risk"] > 0.5) is outlier
    assert len(result["neighbours"]) == 3


def test_reference_detector_horizons():
    record = json.loads((DETECTOR / "detector.json").read_text())
    assert [entry["horizon"] for entry in record["horizons"]] == [2, 4, 15, 30, 75]
    outliers = [entry["run"] for entry in record["labels"] if entry["label"] == 1]
    assert len(outliers) == 8
    assert "seed38" in outliers
