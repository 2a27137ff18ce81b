"""The user-facing jobs behind each ``trainmap`` command, each tracked in MLflow.

The CLI parses arguments and calls these functions; notebooks can call them too.
Every function takes a configuration dataclass, logs it to an MLflow run, and
returns what it produced.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from trainmap import tracking

logger = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """Configuration of ``trainmap extract``.

    Attributes
    ----------
    families : str
        Comma-separated feature families (``hu``, ``loss``).
    max_step : int or None
        Only checkpoints at steps <= max_step.
    trust_pickles : bool
        Fully unpickle torch files that need Python globals, which can run code
        from them; the rows of those checkpoints get ``flag/trusted_pickle``.
    workers : int
        Checkpoints extracted at once, each in its own single-threaded process.
    executor : str
        ``local`` (a process pool) or ``ray`` (the cluster of ``ray.init()``).
    device : str
        ``cpu`` or ``cuda``: where the singular values are computed.
    cache_dir : str or None
        Result cache; None uses ``.<output name>.cache/`` beside the output.
    cache : bool
        Reuse and store results by checkpoint content; False recomputes everything.
    """

    families: str = "hu,loss"
    max_step: int | None = None
    trust_pickles: bool = False
    workers: int = 1
    executor: str = "local"
    device: str = "cpu"
    cache_dir: str | None = None
    cache: bool = True

    def cache_folder(self, output: str | Path) -> Path | None:
        """Return the result-cache folder for ``output``, or None when caching is off."""
        if not self.cache:
            return None
        if self.cache_dir:
            return Path(self.cache_dir)
        output = Path(output)
        return output.parent / f".{output.name}.cache"


@dataclass
class TableOptions:
    """How to read a feature table made by trainmap or another tool.

    Attributes
    ----------
    run_column, step_column : str
        Names of the run and step columns; renamed to ``run`` and ``step``.
    """

    run_column: str = "run"
    step_column: str = "step"

    def read(self, path: str | Path) -> pd.DataFrame:
        """Read a Parquet, CSV or TSV feature table."""
        from trainmap.features import read_table

        return read_table(path, self.run_column, self.step_column)


@dataclass
class MapConfig:
    """Configuration of ``trainmap map``.

    Attributes
    ----------
    horizon : int, str or None
        Last step drawn, a step or a percentage such as ``"25%"``; required.
    threshold : float
        Label threshold (modified z-score), as in ``trainmap train``.
    label_metric : str
        Outcome column for labels.
    labels : str or None
        CSV of labels that replaces the rule.
    features : str or None
        Feature families or prefixes to embed; None uses all.
    random_state : int
        UMAP seed.
    """

    horizon: int | str | None = None
    threshold: float = 3.5
    label_metric: str = "loss/eval"
    labels: str | None = None
    features: str | None = None
    random_state: int = 0


@dataclass
class EvaluateConfig:
    """Configuration of ``trainmap evaluate`` beyond the labels and detector settings.

    Attributes
    ----------
    methods : list of str
        Methods to compare; see :data:`trainmap.models.methods.METHODS`.
    n_boot : int
        Bootstrap resamples for the confidence intervals.
    test_table : str or None
        A second feature table (e.g. another model width) to evaluate models
        trained on the first one; None runs cross-validation on the first.
    """

    methods: list[str] = field(default_factory=lambda: ["detector", "early_loss", "last_checkpoint", "hmm"])
    n_boot: int = 1000
    test_table: str | None = None


def ensemble(config, out_dir: str | Path, workers: int = 1, workdir: str | Path | None = None) -> list[Path]:
    """Train a seed ensemble and log its configuration and curves to MLflow.

    The parent MLflow run stores the configuration. One child run per training
    run stores its train loss per step and eval loss per checkpoint.
    """
    from trainmap.ensemble import train_ensemble
    from trainmap.features.losses import read_metrics

    out_dir = Path(out_dir)
    with tracking.tracked_run("ensemble", workdir, tags={"trainmap.command": "ensemble"}):
        tracking.log_config(config)
        tracking.set_tags({"trainmap.runs_dir": str(out_dir.resolve())})
        run_dirs = train_ensemble(config, out_dir, workers=workers)
        for run_dir in run_dirs:
            series = read_metrics(run_dir / "metrics.jsonl")
            tracking.log_child_curves(run_dir.name, series)
    return run_dirs


def extract(runs_dir: str | Path, output: str | Path, config: ExtractConfig, workdir=None, progress: bool = True):
    """Extract the feature table of every run under ``runs_dir`` into ``output``.

    Returns
    -------
    table : pandas.DataFrame
    summary : ExtractionSummary
    """
    from trainmap.checkpoints import find_runs, trusted_pickles
    from trainmap.features import extract_runs, resolve_families, write_table

    families = resolve_families(config.families)
    runs = find_runs(runs_dir)
    with tracking.tracked_run("extract", workdir, tags={"trainmap.command": "extract"}):
        tracking.log_config(config)
        tracking.log_config({"runs_dir": str(Path(runs_dir).resolve()), "output": str(Path(output).resolve()),
                             "n_runs": len(runs)})
        with trusted_pickles(config.trust_pickles):
            table, summary = extract_runs(
                runs, families=families, max_step=config.max_step, progress=progress, workers=config.workers,
                executor=config.executor, cache_dir=config.cache_folder(output), device=config.device)
        write_table(table, output)
        tracking.log_metrics({
            "checkpoints_extracted": summary.computed,
            "checkpoints_from_cache": summary.from_cache,
            "checkpoints_read": summary.read,
            "checkpoints_skipped": len(summary.skipped),
            **{f"checkpoints_flagged.{name}": count for name, count in summary.flagged.items()},
        })
        tracking.log_integrity(table, summary.lines(), summary.gaps)
    return table, summary


def pull(size: str, seeds: list[int], steps: list[int], out_dir: str | Path,
         cache_dir: str | Path | None = None, offline: bool | None = None) -> list:
    """Pull Pythia checkpoints into run folders; returns the PulledCheckpoint list.

    Not tracked in MLflow: it only fills a folder, which ``extract`` then records.
    """
    from trainmap.checkpoints.hub import pull_pythia

    return pull_pythia(size, seeds, steps, out_dir, cache_dir=cache_dir, offline=offline)


def labels(source: str | Path | pd.DataFrame, config=None, table_options: TableOptions | None = None):
    """Label the runs of a feature table, or of a folder of runs, and return (labels, rule).

    From a folder, outcomes and train-loss curves come from each run's
    ``metrics.jsonl``, so no feature extraction is needed; the spike rule then
    sees every logged step. Non-finite weights are only seen in a feature table
    (its ``flag/nonfinite`` column).
    """
    from trainmap.models.training import TrainConfig, resolve_labels

    config = config or TrainConfig()
    if isinstance(source, pd.DataFrame):
        return resolve_labels(source, config)
    source = Path(source)
    if source.is_dir():
        table, curves = _loss_table(source)
        return resolve_labels(table, config, curves)
    return resolve_labels((table_options or TableOptions()).read(source), config)


def train(table_path: str | Path, output: str | Path, config, workdir=None,
          table_options: TableOptions | None = None, progress: bool = True):
    """Train, evaluate, save and register a detector; returns the TrainResult."""
    from trainmap.map import draw_training_map
    from trainmap.models.artifact import IMPORTANCE_IMAGE, MAP_IMAGE
    from trainmap.models.explain import global_importance, plot_importance
    from trainmap.models.training import train_detector

    table = (table_options or TableOptions()).read(table_path)
    output = Path(output)
    name = config.name or output.name
    with tracking.tracked_run(f"train {name}", workdir, tags={"trainmap.command": "train"}):
        tracking.log_config(config)
        tracking.log_config({"features_table": str(Path(table_path).resolve()), "output": str(output.resolve())})
        result = train_detector(table, config, output, progress=progress)
        artifact = result.artifact
        largest = artifact.models[-1]
        tracking.log_config({"label_rule": result.rule.describe() if not config.labels else f"csv {config.labels}",
                             "horizon_steps": artifact.horizons,
                             "detector_kind": result.detector_params["kind"],
                             "detector_calibration": result.detector_params["calibration"]})
        for _, row in result.cv_table.iterrows():
            tracking.log_metrics({f"cv_{key}": row[key] for key in
                                  ("auroc", "auroc_low", "auroc_high", "average_precision", "brier")},
                                 step=int(row["horizon"]))
        tracking.log_metrics({"n_runs": len(largest.runs), "n_outliers": int(largest.labels.sum())})

        labels_map = dict(zip(largest.runs, largest.labels.astype(float)))
        run_coords = pd.DataFrame(largest.coords, index=largest.runs, columns=["x", "y"])
        draw_training_map(
            table[table["run"].isin(largest.runs)], largest.horizon, labels_map, output / MAP_IMAGE,
            features=largest.spec.features, random_state=config.random_state, run_coords=run_coords,
            title=f"detector {name} at step {largest.horizon}: CV AUROC {largest.cv.get('auroc', float('nan')):.2f}",
        )
        importance = global_importance(largest.spec.columns, largest.detector.contributions(largest.reference)[:, :-1])
        plot_importance(importance, output / IMPORTANCE_IMAGE,
                        title=f"global importance at horizon step {largest.horizon} ({largest.detector.kind_})")
        tracking.log_artifact(output, "detector")
        booster = largest.detector.model_ if largest.detector.kind_ == "trees" else None
        version = tracking.log_detector_model(booster, output, registered_name=name)
        tracking.set_tags({"trainmap.registered_model": name, "trainmap.model_version": str(version)})
    result.registered_version = version
    return result


def score(run_dir: str | Path | None, detector: str | Path, top: int = 10, workdir=None, progress: bool = True,
          table_path: str | Path | None = None, run: str | None = None, table_options: TableOptions | None = None,
          trust_pickles: bool = False):
    """Score one run against a detector artifact; returns the ScoreResult.

    The run comes from its checkpoint folder (``run_dir``), or from a feature
    table (``table_path`` and ``run``) made by trainmap or another tool.
    ``trust_pickles`` allows full unpickling of torch files, as in :class:`ExtractConfig`.
    """
    from trainmap.checkpoints import trusted_pickles
    from trainmap.models.artifact import DetectorArtifact
    from trainmap.models.scoring import score_run, score_table

    artifact = DetectorArtifact.load(detector)
    label = run or Path(run_dir).name
    with tracking.tracked_run(f"score {label}", workdir, tags={"trainmap.command": "score"}):
        tracking.log_config({"run": str(Path(run_dir).resolve()) if run_dir else f"{table_path}:{run}",
                             "detector": str(Path(detector).resolve()), "horizons": artifact.horizons,
                             "trust_pickles": trust_pickles})
        if table_path is not None:
            table = (table_options or TableOptions()).read(table_path)
            result = score_table(table, run, artifact, top=top, path=str(table_path))
        else:
            with trusted_pickles(trust_pickles):
                result = score_run(run_dir, artifact, top=top, progress=progress)
        tracking.log_metrics({"risk": result.risk, "horizon": result.horizon})
        tracking.log_dict(result.to_dict(), "score.json")
    return result


def evaluate(table_path: str | Path, output: str | Path, config, options: EvaluateConfig, workdir=None,
             table_options: TableOptions | None = None, progress: bool = True) -> dict:
    """Compare the detector with the baselines on shared splits; write table, plot and risks.

    Returns
    -------
    dict
        ``metrics`` (DataFrame), ``predictions`` (DataFrame), paths of the outputs,
        the split scheme and the detector parameters used.
    """
    from trainmap.models.evaluation import evaluate_methods

    reader = table_options or TableOptions()
    table = reader.read(table_path)
    test_table = reader.read(options.test_table) if options.test_table else None
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with tracking.tracked_run("evaluate", workdir, tags={"trainmap.command": "evaluate"}):
        tracking.log_config(config)
        tracking.log_config(options)
        report = evaluate_methods(table, config, options, output, test_table=test_table, progress=progress)
        tracking.log_config({"scheme": report["scheme"], "horizon_steps": report["horizons"],
                             "label_rule": report["rule"], "n_runs": report["n_runs"],
                             "n_outliers": report["n_outliers"],
                             "detector_kind": report["detector_params"]["kind"]})
        for method, rows in report["metrics"].groupby("method", sort=False):
            with tracking.child_run(method):
                tracking.log_config({"method": method})
                for _, row in rows.iterrows():
                    tracking.log_metrics({key: row[key] for key in ("auroc", "auroc_low", "auroc_high",
                                                                    "average_precision", "brier")},
                                         step=int(row["horizon"]))
        for path in report["files"].values():
            tracking.log_artifact(path, "evaluation")
    return report


def draw_map(table_path: str | Path, output: str | Path, config: MapConfig, workdir=None,
             highlight: dict | None = None, table_options: TableOptions | None = None) -> Path:
    """Draw the training map of a feature table, coloured by label."""
    from trainmap.map import draw_training_map
    from trainmap.models.training import TrainConfig, select_features
    from trainmap.models.vectors import resolve_horizons

    if config.horizon is None:
        raise ValueError("a horizon is required: pass --horizon STEP")
    table = (table_options or TableOptions()).read(table_path)
    horizon = resolve_horizons(table, [config.horizon], predicting=False)[0]
    label_config = TrainConfig(threshold=config.threshold, label_metric=config.label_metric, labels=config.labels)
    label_frame, _ = labels(table, label_config)
    labels_map = dict(zip(label_frame["run"], label_frame["label"]))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tracking.tracked_run("map", workdir, tags={"trainmap.command": "map"}):
        tracking.log_config(config)
        draw_training_map(table, horizon, labels_map, output,
                          features=select_features(table, config.features),
                          random_state=config.random_state, highlight=highlight,
                          title=f"training map up to step {horizon}")
        tracking.log_artifact(output)
    return output


def to_json(value) -> str:
    """Serialise a result for ``--json`` output."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    return json.dumps(value, indent=2, default=float)


def _loss_table(root: Path) -> tuple[pd.DataFrame, dict]:
    """Build a loss-only table and per-step train curves from the runs' metrics.jsonl."""
    from trainmap.checkpoints import find_runs
    from trainmap.features.losses import loss_features, read_metrics

    rows, curves = [], {}
    for run in find_runs(root):
        series = read_metrics(run.metrics_path)
        if not series["eval_loss"]:
            raise ValueError(
                f"run {run.path} has no eval_loss records in {run.metrics_path.name}; label it from a "
                "feature table or with --labels"
            )
        curves[run.name] = series["train_loss"]
        for step, features in loss_features(series, run.steps).items():
            rows.append({"run": run.name, "step": step, **features})
    return pd.DataFrame(rows), curves
