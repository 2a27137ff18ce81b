"""The training map: UMAP embeddings of runs and of checkpoint trajectories.

Two views share one figure:

- the *run map* embeds run vectors (normalised across the ensemble at each step),
  which are the detector's input, so runs with similar detector inputs sit together;
- the *trajectory map* embeds every checkpoint up to the horizon, each feature
  scaled by its median and MAD over all those checkpoints, and draws each run as a
  path from its first checkpoint to its last, as in Hu et al. (2023).

New runs are placed on a saved run map without refitting UMAP: a run lands at the
inverse-distance-weighted mean of its nearest reference runs, the same starting
point UMAP's own ``transform`` uses before it optimises.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

LABEL_COLORS = {1: "#d62728", 0: "#1f77b4", None: "#7f7f7f"}
LABEL_NAMES = {1: "outlier", 0: "stable", None: "unlabelled"}
MIN_RUNS = 4


@dataclass
class Placement:
    """Position of a run on a run map.

    Attributes
    ----------
    xy : ndarray of shape (2,)
        Map coordinates.
    neighbours : list of (str, float)
        Nearest reference runs and their distances in run-vector space.
    """

    xy: np.ndarray
    neighbours: list[tuple[str, float]]


def embed(vectors: np.ndarray, random_state: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """Embed rows of ``vectors`` into 2-D with UMAP; NaN counts as 0 (the median).

    Parameters
    ----------
    vectors : ndarray of shape (n, d)
        Normalised vectors; at least 4 rows.
    random_state : int
        UMAP seed; with it UMAP runs single-threaded and reproducibly.
    n_neighbors : int
        Upper bound on UMAP's neighbourhood size; lowered to n - 1 for small n.

    Returns
    -------
    ndarray of shape (n, 2)

    Raises
    ------
    ValueError
        If there are fewer than 4 rows.
    """
    import umap

    data = np.nan_to_num(np.asarray(vectors, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    n = len(data)
    if n < MIN_RUNS:
        raise ValueError(f"a training map needs at least {MIN_RUNS} points, got {n}")
    reducer = umap.UMAP(
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        min_dist=0.1,
        random_state=random_state,
        # Spectral initialisation needs more points than the embedding has dimensions
        # by a margin; on tiny inputs it fails, so those start from random positions.
        init="spectral" if n > 10 else "random",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; small-n notices
        return reducer.fit_transform(data)


def place(vector: np.ndarray, reference: np.ndarray, coords: np.ndarray, runs: list[str], k: int = 3) -> Placement:
    """Place one normalised run vector on a run map of reference runs.

    Parameters
    ----------
    vector : ndarray of shape (d,)
    reference : ndarray of shape (n, d)
        Normalised reference run vectors, the rows the map was fitted on.
    coords : ndarray of shape (n, 2)
        Their map coordinates.
    runs : list of str
        Their names.
    k : int
        Number of neighbours.
    """
    data = np.nan_to_num(np.asarray(reference, dtype=float), nan=0.0)
    point = np.nan_to_num(np.asarray(vector, dtype=float), nan=0.0)
    distances = np.sqrt(((data - point) ** 2).sum(axis=1))
    order = np.argsort(distances, kind="stable")[: min(k, len(runs))]
    weights = 1.0 / np.maximum(distances[order], 1e-12)
    xy = (coords[order] * weights[:, None]).sum(axis=0) / weights.sum()
    return Placement(xy, [(runs[i], float(distances[i])) for i in order])


def trajectory_matrix(table: pd.DataFrame, features: list[str], horizon: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the checkpoint rows up to ``horizon`` and their robustly scaled features.

    Scaling uses the median and MAD of each feature over all those checkpoints,
    so a run's path keeps its movement over training.
    """
    rows = table[table["step"] <= horizon].sort_values(["run", "step"]).reset_index(drop=True)
    values = rows[features].to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmedian(values, axis=0)
        scale = 1.4826 * np.nanmedian(np.abs(values - center), axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    center = np.where(np.isfinite(center), center, 0.0)
    return rows, (values - center) / scale


def plot_training_map(
    run_coords: pd.DataFrame,
    trajectory_rows: pd.DataFrame | None,
    trajectory_coords: np.ndarray | None,
    labels: dict[str, float],
    path,
    horizon: int,
    highlight: dict[str, np.ndarray] | None = None,
    title: str | None = None,
):
    """Draw the training map and save it to ``path`` (PNG, SVG or PDF by suffix).

    Parameters
    ----------
    run_coords : pandas.DataFrame
        Indexed by run, columns ``x`` and ``y``.
    trajectory_rows, trajectory_coords
        Output of :func:`trajectory_matrix` and its embedding; None draws only the
        run map.
    labels : dict
        Run to 1 (outlier), 0 (stable) or NaN (unknown).
    horizon : int
        Shown in the titles.
    highlight : dict, optional
        Extra runs to mark with a star on the run map (for example scored runs),
        name to coordinates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if trajectory_coords is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.5), squeeze=False)
    axes = axes[0]
    _draw_run_map(axes[0], run_coords, labels, highlight or {}, horizon)
    if trajectory_coords is not None:
        _draw_trajectories(axes[1], trajectory_rows, trajectory_coords, labels, horizon)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _label_key(value) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value)


def _draw_run_map(axis, run_coords: pd.DataFrame, labels, highlight, horizon: int) -> None:
    """Scatter runs coloured by label, with names, and starred highlighted runs."""
    for key in (0, 1, None):
        names = [run for run in run_coords.index if _label_key(labels.get(run)) == key]
        if not names:
            continue
        points = run_coords.loc[names]
        axis.scatter(points["x"], points["y"], s=60, color=LABEL_COLORS[key],
                     label=f"{LABEL_NAMES[key]} ({len(names)})", edgecolor="white", linewidth=0.5)
    for run, row in run_coords.iterrows():
        axis.annotate(run, (row["x"], row["y"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for run, xy in highlight.items():
        color = LABEL_COLORS[_label_key(labels.get(run))]
        axis.scatter([xy[0]], [xy[1]], marker="*", s=320, color=color, edgecolor="black", linewidth=1.0,
                     label=f"scored: {run}", zorder=5)
    axis.set_title(f"run map: run vectors up to step {horizon}")
    axis.set_xlabel("UMAP 1")
    axis.set_ylabel("UMAP 2")
    axis.legend(fontsize=8, loc="best")


def _draw_trajectories(axis, rows: pd.DataFrame, coords: np.ndarray, labels, horizon: int) -> None:
    """Draw each run's checkpoints as a path, ending in a marker at its last step."""
    drawn = set()
    groups = rows.groupby("run").groups
    # Outliers are few: draw them last and on top, so stable paths do not hide them.
    order = sorted(groups, key=lambda run: _label_key(labels.get(run)) == 1)
    for run in order:
        points = coords[np.asarray(groups[run])]
        key = _label_key(labels.get(run))
        color = LABEL_COLORS[key]
        layer = 3 if key == 1 else 2
        legend = None if key in drawn else LABEL_NAMES[key]
        drawn.add(key)
        axis.plot(points[:, 0], points[:, 1], "-", color=color, alpha=0.9 if key == 1 else 0.45,
                  linewidth=1.6 if key == 1 else 1.0, label=legend, zorder=layer)
        axis.scatter(points[:1, 0], points[:1, 1], s=12, color=color, marker="o", alpha=0.6, zorder=layer)
        axis.scatter(points[-1:, 0], points[-1:, 1], s=40, color=color, marker=">", edgecolor="black",
                     linewidth=0.4, zorder=layer)
    axis.set_title(f"checkpoint trajectories, steps 0..{horizon} (o start, > end)")
    axis.set_xlabel("UMAP 1")
    axis.set_ylabel("UMAP 2")
    axis.legend(fontsize=8, loc="best")


def draw_training_map(
    table: pd.DataFrame,
    horizon: int,
    labels: dict[str, float],
    path,
    features: list[str] | None = None,
    random_state: int = 0,
    run_coords: pd.DataFrame | None = None,
    highlight: dict[str, np.ndarray] | None = None,
    title: str | None = None,
) -> pd.DataFrame:
    """Embed a feature table's runs and checkpoints up to ``horizon`` and draw the map.

    Parameters
    ----------
    table : pandas.DataFrame
        Feature table.
    horizon : int
        Last step drawn and used in run vectors.
    labels : dict
        Run to label (1, 0 or NaN).
    path : str or Path
        Output image.
    features : list of str, optional
        Feature columns; default every feature column with finite values.
    random_state : int
        UMAP seed.
    run_coords : pandas.DataFrame, optional
        Precomputed run-map coordinates (indexed by run, columns x, y), e.g. a
        detector's; when None, run vectors are built and embedded here.
    highlight : dict, optional
        Runs to star, name to coordinates.

    Returns
    -------
    pandas.DataFrame
        Run-map coordinates, indexed by run.
    """
    from trainmap.models.vectors import MADScaler, make_spec, run_vectors

    spec = make_spec(table, horizon, features)
    if run_coords is None:
        vectors = run_vectors(table, spec)
        scaled = MADScaler().fit_transform(vectors.to_numpy(dtype=float))
        coords = embed(scaled, random_state=random_state)
        run_coords = pd.DataFrame(coords, index=vectors.index, columns=["x", "y"])
    rows, scaled_rows = trajectory_matrix(table, spec.features, horizon)
    trajectory = embed(scaled_rows, random_state=random_state) if len(rows) >= MIN_RUNS else None
    plot_training_map(run_coords, rows, trajectory, labels, path, horizon, highlight, title)
    return run_coords
