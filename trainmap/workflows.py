"""The user-facing jobs behind each ``trainmap`` command, each tracked in MLflow.

The CLI parses arguments and calls these functions; notebooks can call them too.
Every function takes a configuration dataclass, logs it to an MLflow run, and
returns what it produced.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
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
    """

    families: str = "hu,loss"
    max_step: int | None = None
    trust_pickles: bool = False


@dataclass
class MapConfig:
    """Configuration of ``trainmap map``.

    Attributes
    ----------
    horizon : int or None
        Last step drawn; required.
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

    horizon: int | None = None
    threshold: float = 3.5
    label_metric: str = "loss/eval"
    labels: str | None = None
    features: str | None = None
    random_state: int = 0


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
            table, summary = extract_runs(runs, families=families, max_step=config.max_step, progress=progress)
        write_table(table, output)
        tracking.log_metrics({
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


def labels(table: pd.DataFrame, threshold: float = 3.5, metric: str = "loss/eval", labels_csv: str | None = None):
    """Return the per-run labels of a feature table and the rule used."""
    from trainmap.models.training import TrainConfig, resolve_labels

    return resolve_labels(table, TrainConfig(threshold=threshold, label_metric=metric, labels=labels_csv))


def train(table_path: str | Path, output: str | Path, config, workdir=None):
    """Train, evaluate, save and register a detector; returns the TrainResult."""
    from trainmap.features import read_table
    from trainmap.map import draw_training_map
    from trainmap.models.artifact import MAP_IMAGE
    from trainmap.models.training import train_detector

    table = read_table(table_path)
    output = Path(output)
    name = config.name or output.name
    with tracking.tracked_run(f"train {name}", workdir, tags={"trainmap.command": "train"}):
        tracking.log_config(config)
        tracking.log_config({"features_table": str(Path(table_path).resolve()), "output": str(output.resolve())})
        result = train_detector(table, config, output)
        artifact = result.artifact
        tracking.log_config({"label_rule": result.rule.describe() if not config.labels else f"csv {config.labels}",
                             "n_columns": len(artifact.spec.columns),
                             "steps": artifact.spec.steps})
        tracking.log_metrics({f"cv_{key}": value for key, value in result.cv_metrics.items()})

        labels_map = dict(zip(artifact.runs, artifact.labels.astype(float)))
        run_coords = pd.DataFrame(artifact.coords, index=artifact.runs, columns=["x", "y"])
        draw_training_map(
            table[table["run"].isin(artifact.runs)], artifact.spec.horizon, labels_map, output / MAP_IMAGE,
            features=artifact.spec.features, random_state=config.random_state, run_coords=run_coords,
            title=f"detector {name}: CV AUROC {result.cv_metrics['auroc']:.2f}",
        )
        tracking.log_artifact(output, "detector")
        version = tracking.log_detector_model(artifact.detector.model_, output, registered_name=name)
        tracking.set_tags({"trainmap.registered_model": name, "trainmap.model_version": str(version)})
    result.registered_version = version
    return result


def score(run_dir: str | Path, detector: str | Path, top: int = 10, workdir=None, progress: bool = True,
          trust_pickles: bool = False):
    """Score one run against a detector artifact; returns the ScoreResult.

    ``trust_pickles`` allows full unpickling of torch files, as in :class:`ExtractConfig`.
    """
    from trainmap.checkpoints import trusted_pickles
    from trainmap.models.artifact import DetectorArtifact
    from trainmap.models.scoring import score_run

    artifact = DetectorArtifact.load(detector)
    with tracking.tracked_run(f"score {Path(run_dir).name}", workdir, tags={"trainmap.command": "score"}):
        tracking.log_config({"run_dir": str(Path(run_dir).resolve()), "detector": str(Path(detector).resolve()),
                             "horizon": artifact.spec.horizon, "trust_pickles": trust_pickles})
        with trusted_pickles(trust_pickles):
            result = score_run(run_dir, artifact, top=top, progress=progress)
        tracking.log_metrics({"risk": result.risk})
        tracking.log_dict(result.to_dict(), "score.json")
    return result


def draw_map(table_path: str | Path, output: str | Path, config: MapConfig, workdir=None,
             highlight: dict | None = None) -> Path:
    """Draw the training map of a feature table, coloured by label."""
    from trainmap.features import read_table
    from trainmap.map import draw_training_map
    from trainmap.models.training import select_features

    if config.horizon is None:
        raise ValueError("a horizon is required: pass --horizon STEP")
    table = read_table(table_path)
    label_frame, _ = labels(table, config.threshold, config.label_metric, config.labels)
    labels_map = dict(zip(label_frame["run"], label_frame["label"]))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tracking.tracked_run("map", workdir, tags={"trainmap.command": "map"}):
        tracking.log_config(config)
        draw_training_map(table, config.horizon, labels_map, output,
                          features=select_features(table, config.features),
                          random_state=config.random_state, highlight=highlight,
                          title=f"training map up to step {config.horizon}")
        tracking.log_artifact(output)
    return output


def to_json(value) -> str:
    """Serialise a result for ``--json`` output."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    return json.dumps(value, indent=2, default=float)
