"""The committed reference table and detector load and score with the current code."""

import json
from pathlib import Path

import pytest

from trainmap.cli import main
from trainmap.features import read_table
from trainmap.features.table import feature_columns
from trainmap.models.artifact import DetectorArtifact
from trainmap.models.scoring import score_table

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


def test_unreadable_step_not_used():
    table = read_table(TABLE)
    row = (table["run"] == "seed5") & (table["step"] == 15)
    parameters = [column for column in feature_columns(table) if not column.startswith("loss/")]
    table.loc[row, parameters] = float("nan")
    table.loc[row, "flag/unreadable"] = True
    table.loc[row, "flag/error"] = "SafetensorError: incomplete metadata"
    result = score_table(table, "seed5", DetectorArtifact.load(DETECTOR))
    assert 15 not in result.steps
    assert result.flagged_steps == [
        {"step": 15, "flags": ["flag/unreadable"], "error": "SafetensorError: incomplete metadata"}
    ]
    assert result.missing_steps == []
    assert any("checkpoint at step 15 not used" in line for line in result.lines())


def test_other_width_outside_ensemble():
    artifact = DetectorArtifact.load(DETECTOR)
    other_width = score_table(read_table(ROOT / "features" / "crossscale-w96.parquet"), "seed0", artifact)
    same_config = score_table(read_table(TABLE), "seed5", artifact)
    assert other_width.outside_ensemble
    assert not same_config.outside_ensemble
    assert not other_width.in_training
    assert same_config.in_training
    lines = other_width.lines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("  WARNING: the run lies far outside"))
    risk = next(i for i, line in enumerate(lines) if line.startswith("  risk of becoming an outlier"))
    assert warning < risk


def test_score_notes_training_run_weak_horizon():
    result = score_table(read_table(TABLE), "seed38", DetectorArtifact.load(DETECTOR))
    result.cv_auroc = 0.45
    text = "\n".join(result.lines())
    assert "NOTE: seed38 is one of the detector's training runs" in text
    assert "cross-validated AUROC at this horizon is 0.45" in text


def test_missing_detector_folder(tmp_path, capsys):
    args = ["score", "--table", str(TABLE), "--run", "seed5", "--detector", str(tmp_path / "absent")]
    assert main(args) == 2
    assert f"detector folder {tmp_path / 'absent'} not found" in capsys.readouterr().err


def test_folder_without_detector_json(tmp_path, capsys):
    args = ["score", "--table", str(TABLE), "--run", "seed5", "--detector", str(tmp_path)]
    assert main(args) == 2
    assert "has no detector.json" in capsys.readouterr().err
