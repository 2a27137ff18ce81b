import numpy as np
import pytest

from trainmap.models.explain import aggregate, family_of, global_importance, module_of


@pytest.mark.parametrize("column, module", [
    ("layers/layer0.attn_qkv.spectral@30", "attention QKV"),
    ("qk/layer1.spectral_max@30", "attention QKV"),
    ("scale/layer0.attn_out_to_embed@30", "attention output"),
    ("layers/layer1.mlp_out.frobenius@30", "MLP out"),
    ("dynamics/mlp_in.update_rate@30", "MLP in"),
    ("unembed/row_norm_max@30", "unembedding"),
    ("scale/embed_rms@30", "embedding"),
    ("layers/ln_final.gain_mean@30", "layer norm"),
    ("dynamics/ln.cos_prev@30", "layer norm"),
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
