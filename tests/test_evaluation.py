import numpy as np
import pandas as pd
import pytest

from trainmap.models.evaluation import cross_validate_methods, make_splits, metrics_table, transfer_methods
from trainmap.models.labels import label_runs
from trainmap.models.methods import HMMMethod


@pytest.fixture(scope="module")
def micro_labels(micro_table):
    table, _ = micro_table
    labels = label_runs(table)
    return table, labels[["run", "label"]]


def test_splits_reject_single_outlier():
    with pytest.raises(ValueError, match=r"1 outlier\(s\) and 9 stable"):
        make_splits(np.array([1] + [0] * 9))


def test_folds_need_enough_outliers():
    with pytest.raises(ValueError, match="5 stratified folds need at least 5 outlier"):
        make_splits(np.array([1, 1, 1] + [0] * 9), folds=5)


def test_every_method_shares_splits(micro_labels):
    table, labels = micro_labels
    predictions, splits, _ = cross_validate_methods(
        table, labels, [4, 6], ["detector", "early_loss", "last_checkpoint", "hmm"], progress=False)
    folds = predictions.groupby(["method", "horizon"])[["run", "fold"]].apply(
        lambda group: tuple(sorted(zip(group["run"], group["fold"]))))
    assert folds.nunique() == 1
    assert len(predictions) == 4 * 2 * len(labels)


def test_metrics_table_has_intervals(micro_labels):
    table, labels = micro_labels
    predictions, _, _ = cross_validate_methods(table, labels, [6], ["detector"], progress=False)
    row = metrics_table(predictions, n_boot=200, final_step=24).iloc[0]
    assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
    assert row["fraction"] == 0.25


def test_hmm_picks_states_by_bic(micro_labels):
    table, labels = micro_labels
    method = HMMMethod(max_states=4).fit(table, labels["run"].tolist(), labels["label"].to_numpy(), 24)
    assert set(method.bic_) <= {1, 2, 3, 4}
    assert method.n_states_ == min(method.bic_, key=method.bic_.get)


def test_transfer_scores_other_table(micro_labels):
    table, labels = micro_labels
    other = table.copy()
    other["run"] = "other-" + other["run"]
    other_labels = labels.assign(run="other-" + labels["run"])
    predictions, _ = transfer_methods(table, labels, other, other_labels, [6], ["detector", "early_loss"])
    assert set(predictions["run"]) == set(other_labels["run"])


def test_evaluate_command_writes_outputs(micro_table, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from trainmap.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _, path = micro_table
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(path), "-o", str(out), "--horizon", "4", "6", "--n-boot", "100"]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert sorted(metrics["method"].unique()) == ["detector", "early_loss", "hmm", "last_checkpoint"]
    assert (out / "auroc.png").read_bytes().startswith(b"\x89PNG")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("trainmap").experiment_id])
    parents = [run for run in runs if run.data.tags.get("trainmap.command") == "evaluate"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(run.info.run_name for run in children) == ["detector", "early_loss", "hmm", "last_checkpoint"]


def test_fast_metrics_match_sklearn():
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from trainmap.models.evaluation import score_predictions

    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.2).astype(int)
    risk = np.round(rng.random(60), 1)  # rounding makes ties
    scores = score_predictions(y, risk)
    assert scores["auroc"] == pytest.approx(roc_auc_score(y, risk))
    assert scores["average_precision"] == pytest.approx(average_precision_score(y, risk))
    assert scores["brier"] == pytest.approx(brier_score_loss(y, risk))


def test_uninformative_method_is_not_anti_ranked():
    # Features carry no signal; a prior that changed with the held-out run would
    # rank every held-out outlier last and give an AUROC near 0.
    rng = np.random.default_rng(1)
    rows = [{"run": f"r{i}", "step": step, "hu/L2": rng.normal(), "loss/eval": 1.0}
            for i in range(20) for step in (0, 10)]
    table = pd.DataFrame(rows)
    labels = pd.DataFrame({"run": [f"r{i}" for i in range(20)], "label": [1] * 5 + [0] * 15})
    predictions, _, _ = cross_validate_methods(table, labels, [10], ["early_loss"], progress=False)
    assert predictions["risk"].nunique() == 1
