"""Explanations: which features, families and module types push a run's risk.

Contributions are the detector's per-column terms of the outlier log-odds
(XGBoost ``pred_contribs`` for trees). Run-vector columns are named
``feature@step``; they are summed by feature, by family (the part before the
first ``/``) and by module type, read from the feature name.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# Module types by the name fragments that GPT-NeoX parameters and trainmap's
# per-module features use; the first matching pattern wins.
MODULE_PATTERNS = (
    ("attention QKV", r"attn_qkv|query_key_value|^qk/"),
    ("attention output", r"attn_out|attention\.dense"),
    ("MLP in", r"mlp_in|dense_h_to_4h"),
    ("MLP out", r"mlp_out|dense_4h_to_h"),
    ("unembedding", r"unembed|embed_out|lm_head"),
    ("embedding", r"embed"),
    # Not a bare "norm": feature names such as spectral_norm would match it.
    ("layer norm", r"(^|[/._])ln(_|\.|$)|layernorm|layer_norm"),
    ("loss", r"^loss/"),
)


def feature_of(column: str) -> str:
    """Return the feature name of a run-vector column ``feature@step``."""
    return str(column).rsplit("@", 1)[0]


def family_of(column: str) -> str:
    """Return the feature family of a column (``hu`` for ``hu/L2@40``)."""
    feature = feature_of(column)
    return feature.split("/", 1)[0] if "/" in feature else "external"


def module_of(column: str) -> str:
    """Return the module type a column describes, or ``"whole model"``."""
    feature = feature_of(column)
    for module, pattern in MODULE_PATTERNS:
        if re.search(pattern, feature):
            return module
    return "whole model"


def aggregate(columns: list[str], contributions: np.ndarray, top: int = 10) -> dict[str, list[dict]]:
    """Sum one run's contributions by feature, family and module type.

    Returns
    -------
    dict
        ``by_feature``, ``by_family`` and ``by_module``: lists of
        ``{"name", "contribution"}``, largest push on the risk first, at most
        ``top`` entries each.
    """
    frame = pd.DataFrame({"column": list(columns), "contribution": np.asarray(contributions, dtype=float)})
    result = {}
    for key, grouping in (("by_feature", feature_of), ("by_family", family_of), ("by_module", module_of)):
        sums = frame.groupby(frame["column"].map(grouping))["contribution"].sum()
        sums = sums.sort_values(ascending=False).head(top)
        result[key] = [{"name": name, "contribution": float(value)} for name, value in sums.items()]
    return result


def global_importance(columns: list[str], contributions: np.ndarray) -> pd.DataFrame:
    """Return mean absolute contribution over runs, summed by feature, family and module.

    Parameters
    ----------
    contributions : ndarray of shape (n_runs, n_columns)
        Without the bias column.
    """
    mean_abs = np.abs(np.asarray(contributions, dtype=float)).mean(axis=0)
    frame = pd.DataFrame({"column": list(columns), "importance": mean_abs})
    rows = []
    for level, grouping in (("feature", feature_of), ("family", family_of), ("module", module_of)):
        sums = frame.groupby(frame["column"].map(grouping))["importance"].sum()
        rows.extend({"level": level, "name": name, "importance": float(value)} for name, value in sums.items())
    return pd.DataFrame(rows).sort_values(["level", "importance"], ascending=[True, False]).reset_index(drop=True)


def plot_importance(importance: pd.DataFrame, path, title: str = "", top: int = 15) -> None:
    """Draw bar charts of the global importance by feature, family and module type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [2, 1, 1]})
    for axis, level in zip(axes, ("feature", "family", "module")):
        rows = importance[importance["level"] == level].head(top).iloc[::-1]
        axis.barh(rows["name"], rows["importance"], color="#1f77b4")
        axis.set_title(f"by {level}")
        axis.set_xlabel("mean |contribution| to the outlier log-odds")
        axis.tick_params(axis="y", labelsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
