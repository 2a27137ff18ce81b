import numpy as np
import pandas as pd
import pytest

from trainmap.models.vectors import MADScaler, make_spec, resolve_horizons, run_vectors


def small_table() -> pd.DataFrame:
    rows = []
    for r, run in enumerate(["a", "b", "c", "d"]):
        for step in (0, 10, 20, 30):
            rows.append({"run": run, "step": step, "f/x": r + step, "f/y": r * step, "flag/nonfinite": 0})
    return pd.DataFrame(rows)


def test_spec_keeps_steps_up_to_horizon():
    spec = make_spec(small_table(), horizon=20)
    assert spec.steps == [0, 10, 20]
    assert spec.features == ["f/x", "f/y"]


def test_vector_columns_are_feature_at_step():
    spec = make_spec(small_table(), horizon=10)
    vectors = run_vectors(small_table(), spec)
    assert list(vectors.columns) == ["f/x@0", "f/y@0", "f/x@10", "f/y@10"]
    assert vectors.loc["c", "f/x@10"] == 12


def test_vectors_ignore_the_future():
    table = small_table()
    spec = make_spec(table, horizon=20)
    before = run_vectors(table, spec)
    table.loc[table["step"] == 30, ["f/x", "f/y"]] = 1e9
    assert run_vectors(table, spec).equals(before)


def test_missing_step_warns_and_is_nan():
    table = small_table()
    table = table[~((table["run"] == "b") & (table["step"] == 10))]
    spec = make_spec(table, horizon=20)
    with pytest.warns(UserWarning, match=r"run b has no checkpoint at step\(s\) \[10\]"):
        vectors = run_vectors(table, spec)
    assert np.isnan(vectors.loc["b", "f/x@10"])


def test_horizon_below_first_step_is_explained():
    table = small_table()
    table["step"] += 5
    with pytest.raises(ValueError, match="earliest step in the feature table is 5"):
        make_spec(table, horizon=1)


def test_scaler_normalises_each_column_across_runs():
    X = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, 50.0]])
    scaler = MADScaler().fit(X)
    assert scaler.center_.tolist() == [3.0, 30.0]
    assert scaler.scale_ == pytest.approx([1.4826, 14.826])


def test_scaler_keeps_nan_and_handles_constant_columns():
    X = np.array([[1.0, 5.0], [np.nan, 5.0], [3.0, 5.0]])
    out = MADScaler().fit_transform(X)
    assert np.isnan(out[1, 0])
    assert out[:, 1].tolist() == [0.0, 0.0, 0.0]


def test_horizon_beyond_final_step_rejected():
    with pytest.raises(ValueError, match="horizon 500 is beyond the final step 30"):
        resolve_horizons(small_table(), ["500"])


def test_horizon_at_final_step_warns(caplog):
    assert resolve_horizons(small_table(), ["100%"]) == [30]
    assert "the detector sees the outcome" in caplog.text


def test_map_horizon_final_step_quiet(caplog):
    assert resolve_horizons(small_table(), ["30"], predicting=False) == [30]
    assert not caplog.text


def test_horizons_sharing_step_logged(caplog):
    caplog.set_level("INFO")
    assert resolve_horizons(small_table(), ["20", "25", "10"]) == [10, 20]
    assert "horizons 20, 25 land on the same step 20" in caplog.text
