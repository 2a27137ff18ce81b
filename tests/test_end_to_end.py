"""The main job through the CLI, on the micro ensemble, with a real MLflow store."""

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from conftest import micro_config
from trainmap.cli import main
from trainmap.ensemble import train_ensemble

HORIZON = "6"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite MLflow store for this module's tests; returns its URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def trained(micro_runs, mlflow_store, tmp_path_factory):
    """Extract and train through the CLI once; returns (table path, detector folder)."""
    folder = tmp_path_factory.mktemp("e2e")
    table = folder / "features.parquet"
    detector = folder / "models" / "micro"
    assert main(["extract", str(micro_runs), "-o", str(table)]) == 0
    assert main(["train", str(table), "--horizon", "4", HORIZON, "-o", str(detector)]) == 0
    return table, detector


def test_detector_folder_has_no_pickle(trained):
    _, detector = trained
    names = sorted(path.name for path in detector.iterdir())
    assert names == ["cv_predictions.csv", "detector.json", "importance.png", "map.json", "map.png"]
    assert not any(path.read_bytes().startswith(b"\x80") for path in detector.iterdir())


def test_detector_has_one_model_per_horizon(trained):
    _, detector = trained
    state = json.loads((detector / "detector.json").read_text())
    assert [entry["horizon"] for entry in state["horizons"]] == [4, 6]
    assert state["detector_params"]["kind"] == "centroid"


def test_mlflow_store_reads_back(trained, mlflow_store):
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("trainmap")
    runs = client.search_runs([experiment.experiment_id])
    commands = {run.data.tags["trainmap.command"] for run in runs}
    assert {"extract", "train"} <= commands
    train_run = next(run for run in runs if run.data.tags["trainmap.command"] == "train")
    assert "cv_auroc" in train_run.data.metrics
    assert train_run.data.params["horizon_steps"] == "[4, 6]"
    assert train_run.info.status == "FINISHED"


def test_model_is_registered(trained, mlflow_store):
    client = MlflowClient(tracking_uri=mlflow_store)
    versions = client.search_model_versions("name='micro'")
    assert [str(version.version) for version in versions] == ["1"]


def test_detector_artifacts_logged(trained, mlflow_store):
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("trainmap")
    run = client.search_runs([experiment.experiment_id], "tags.`trainmap.command` = 'train'")[0]
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "detector")}
    assert "detector/detector.json" in logged
    assert "detector/map.png" in logged


def test_score_outlier_run_json(trained, micro_runs, capsys):
    _, detector = trained
    capsys.readouterr()
    assert main(["score", str(micro_runs / "seed7"), "--detector", str(detector), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["risk"] > 0.5
    assert result["horizon"] == int(HORIZON)
    assert len(result["neighbours"]) == 3


def test_score_new_run_text(trained, tmp_path, capsys):
    _, detector = trained
    new_runs = tmp_path / "new"
    train_ensemble(micro_config(seeds=1, first_seed=40), new_runs)
    capsys.readouterr()
    assert main(["score", str(new_runs / "seed40"), "--detector", str(detector)]) == 0
    out = capsys.readouterr().out
    assert "risk of becoming an outlier" in out
    assert "nearest ensemble runs (distance between normalised run vectors)" in out
    assert "far outside" not in out


def test_score_before_horizon_names_step(trained, micro_runs, tmp_path, capsys):
    _, detector = trained
    early = tmp_path / "early"
    early.mkdir()
    for step in (0, 1, 2):
        shutil.copytree(micro_runs / "seed0" / f"step{step}", early / f"step{step}")
    assert main(["score", str(early), "--detector", str(detector)]) == 2
    assert "smallest horizon is step 4" in capsys.readouterr().err


def test_score_uses_largest_reached_horizon(trained, micro_runs, tmp_path, capsys):
    _, detector = trained
    partial = tmp_path / "partial"
    partial.mkdir()
    for step in (0, 1, 2, 4):
        shutil.copytree(micro_runs / "seed7" / f"step{step}", partial / f"step{step}")
    capsys.readouterr()
    assert main(["score", str(partial), "--detector", str(detector), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["horizon"] == 4
    assert result["horizons"] == [4, 6]


def test_map_command_writes_png(trained, tmp_path):
    table, _ = trained
    output = tmp_path / "map.png"
    assert main(["map", str(table), "--horizon", HORIZON, "-o", str(output)]) == 0
    assert output.read_bytes().startswith(b"\x89PNG")


def test_training_is_reproducible(trained, tmp_path):
    table, detector = trained
    again = tmp_path / "models" / "again"
    assert main(["train", str(table), "--horizon", "4", HORIZON, "-o", str(again)]) == 0
    first = json.loads((detector / "map.json").read_text())["horizons"][HORIZON]
    second = json.loads((again / "map.json").read_text())["horizons"][HORIZON]
    assert first["coords"] == second["coords"]
    assert (detector / "cv_predictions.csv").read_text() == (again / "cv_predictions.csv").read_text()
