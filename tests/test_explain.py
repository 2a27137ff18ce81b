import numpy as np
import pytest

from trainmap.models.explain import aggregate, family_of, global_importance, module_of


@pytest.mark.parametrize("column, module", [
    ("layers/attn_qkv/L0/spectral_norm@30", "attention QKV"),
    ("layers/mlp_out/L1/frobenius@30", "MLP out"),
    ("unembed/row_norm_max@30", "unembedding"),
    ("hu/lambda_max@30", "whole model"),
    ("loss/eval@30", "loss"),
])
def test_module_of(column, module):
    assert module_of(column) == module


def test_family_of_external_column():
    assert family_of("weight_norm@30") == "external"


def test_aggregate_sums_over_steps():
    columns = ["hu/L2@0", "hu/L2@10", "loss/eval@10"]
    groups = aggregate(columns, np.array([0.5, 0.25, -1.0]))
    assert groups["by_feature"][0] == {"name": "hu/L2", "contribution": 0.75}
    assert groups["by_family"][-1] == {"name": "loss", "contribution": -1.0}


def test_global_importance_levels():
    importance = global_importance(["hu/L2@0", "loss/eval@0"], np.array([[1.0, -2.0], [3.0, 0.0]]))
    assert set(importance["level"]) == {"feature", "family", "module"}
    assert importance[importance["name"] == "loss/eval"]["importance"].item() == 1.0
