import math

import numpy as np
import pandas as pd
import pytest

from trainmap.models.labels import LabelRule, find_spike, label_runs, read_labels, robust_z


def outcome_table(finals: dict[str, float], last_steps: dict[str, int] | None = None) -> pd.DataFrame:
    rows = []
    for run, value in finals.items():
        last = (last_steps or {}).get(run, 100)
        rows.append({"run": run, "step": 0, "loss/eval": 5.0})
        rows.append({"run": run, "step": last, "loss/eval": value})
    return pd.DataFrame(rows)


def test_robust_z_matches_definition():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    mad = np.median(np.abs(values - 3.0))
    assert robust_z(values)[-1] == pytest.approx(0.6745 * 97.0 / mad)


def test_robust_z_ignores_nonfinite():
    scores = robust_z(np.array([1.0, 2.0, np.nan, 3.0]))
    assert math.isnan(scores[2])
    assert scores[1] == 0.0


def test_planted_outlier_is_labelled():
    finals = {f"seed{i}": 2.0 + 0.01 * i for i in range(9)}
    finals["seed9"] = 3.0
    labels = label_runs(outcome_table(finals)).set_index("run")
    assert labels.at["seed9", "label"] == 1
    assert labels.drop("seed9")["label"].eq(0).all()


def test_better_than_ensemble_is_not_outlier():
    finals = {f"seed{i}": 2.0 + 0.01 * i for i in range(9)}
    finals["seed9"] = 1.0
    assert label_runs(outcome_table(finals)).set_index("run").at["seed9", "label"] == 0


def test_nonfinite_loss_is_outlier():
    finals = {f"seed{i}": 2.0 + 0.01 * i for i in range(5)}
    finals["seed5"] = float("nan")
    row = label_runs(outcome_table(finals)).set_index("run").loc["seed5"]
    assert row["label"] == 1
    assert "non-finite" in row["reason"]


def test_unfinished_run_has_no_label():
    finals = {f"seed{i}": 2.0 for i in range(4)}
    labels = label_runs(outcome_table(finals, {"seed3": 50})).set_index("run")
    assert math.isnan(labels.at["seed3", "label"])
    assert "unfinished" in labels.at["seed3", "reason"]


def test_threshold_is_a_parameter():
    finals = {f"seed{i}": 2.0 + 0.01 * i for i in range(9)}
    finals["seed9"] = 2.2
    strict = label_runs(outcome_table(finals), LabelRule(threshold=100.0))
    assert strict["label"].sum() == 0


def test_rule_description_names_threshold():
    assert "> 2.5" in LabelRule(threshold=2.5).describe()


def test_missing_metric_column_is_explained():
    with pytest.raises(ValueError, match="no column 'loss/eval'"):
        label_runs(pd.DataFrame({"run": ["a"], "step": [1]}))


def test_labels_csv_accepts_words(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("run,label\nseed0,outlier\nseed1,stable\nseed2,1\n")
    assert read_labels(path)["label"].tolist() == [1.0, 0.0, 1.0]


def test_labels_csv_rejects_unknown_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("run,label\nseed0,maybe\n")
    with pytest.raises(ValueError, match=r"invalid label\(s\) \['maybe'\]"):
        read_labels(path)


def test_labels_csv_needs_columns(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("name,outcome\nseed0,1\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_labels(path)


def test_micro_ensemble_has_planted_outliers(micro_table):
    table, _ = micro_table
    labels = label_runs(table).set_index("run")
    assert labels.loc[["seed3", "seed7"], "label"].eq(1).all()
    assert labels.drop(["seed3", "seed7"])["label"].eq(0).all()


def spiky_curve(recover: bool) -> dict[int, float]:
    """A falling train-loss curve with a spike at step 40 that recovers (or not)."""
    curve = {step: 4.0 - step * 0.01 for step in range(1, 101)}
    for step in range(40, 101 if not recover else 60):
        curve[step] = 6.0
    return curve


def test_find_spike_records_recovery():
    spike = find_spike(spiky_curve(recover=True), rise=1.0, window=1, tolerance=0.5)
    assert spike.step == 40
    assert spike.recovered_step == 60
    assert spike.recovery_steps == 20


def test_find_spike_unrecovered():
    spike = find_spike(spiky_curve(recover=False), rise=1.0, window=1, tolerance=0.5)
    assert spike.recovered_step is None
    assert math.isnan(spike.recovery_steps)


def test_find_spike_ignores_noise_below_rise():
    curve = {step: 3.0 + (0.2 if step % 2 else 0.0) for step in range(1, 50)}
    assert find_spike(curve, rise=1.0, window=1, tolerance=0.5) is None


def test_unrecovered_spike_labels_outlier():
    finals = {f"seed{i}": 2.0 for i in range(5)}
    table = outcome_table(finals)
    curves = {run: spiky_curve(recover=True) for run in finals}
    curves["seed4"] = spiky_curve(recover=False)
    rule = LabelRule(spike_rise=1.0, spike_window=1)
    labels = label_runs(table, rule, curves).set_index("run")
    assert labels.at["seed4", "label"] == 1
    assert "never recovered" in labels.at["seed4", "reason"]
    assert labels.at["seed0", "label"] == 0
    assert labels.at["seed0", "recovery_steps"] == 20


def test_nonfinite_weights_label_outlier():
    finals = {f"seed{i}": 2.0 + 0.01 * i for i in range(5)}
    table = outcome_table(finals)
    table["flag/nonfinite"] = 0
    table.loc[(table["run"] == "seed2") & (table["step"] == 0), "flag/nonfinite"] = 7
    row = label_runs(table).set_index("run").loc["seed2"]
    assert row["label"] == 1
    assert "non-finite weights" in row["reason"]


def test_divergence_rule_can_be_disabled():
    finals = {f"seed{i}": 2.0 + 0.01 * i for i in range(5)}
    finals["seed5"] = float("nan")
    labels = label_runs(outcome_table(finals), LabelRule(divergence=False)).set_index("run")
    assert labels.at["seed5", "label"] == 0


def test_rules_compose_in_description():
    description = LabelRule(spike_rise=1.5).describe()
    assert "z-score" in description
    assert "rises more than 1.5" in description


def test_labels_from_runs_folder(micro_runs, capsys):
    from trainmap.cli import main

    assert main(["labels", str(micro_runs), "--spike-rise", "1.0", "--json"]) == 0
    import json

    records = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["seed3"]["label"] == 1
    assert records["seed0"]["label"] == 0


def test_labels_text_names_each_run(micro_table, capsys):
    from trainmap.cli import main

    _, path = micro_table
    assert main(["labels", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    seed3 = next(line for line in lines if line.startswith("seed3 "))
    seed0 = next(line for line in lines if line.startswith("seed0 "))
    assert seed3.split()[1] == "OUTLIER"
    assert seed0.split()[1] == "stable"
    assert lines[-1] == "2 outlier(s) among 8 runs"
