"""``trainmap <command>``: parse arguments, resolve configuration, call the library.

Configuration precedence is command line > ``--config FILE.toml`` > defaults. A
config file has one table per command, for example::

    [ensemble]
    seeds = 16
    learning_rate = 0.5

    [train]
    horizon = 60
    threshold = 3.0

Heavy libraries are imported inside the command functions, so ``trainmap --help``
starts fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("trainmap")

EXAMPLES = {
    "ensemble": [
        "trainmap ensemble runs/ --seeds 8 --steps 300",
        "trainmap ensemble runs/ --seeds 24 --learning-rate 0.5 --beta2 0.99 --grad-clip 0 --workers 2",
    ],
    "extract": [
        "trainmap extract runs/ -o features.parquet",
        "trainmap extract runs/ -o features.parquet --features all --workers 2",
        "trainmap extract runs/ -o early.parquet --features hu --max-step 60",
        "trainmap extract runs/ -o rich.parquet --features hu,layers,qk,dynamics,loss",
        "trainmap extract megatron-runs/ -o features.parquet --trust-pickles",
    ],
    "pull": [
        "trainmap pull pythia/ --size 410m --seeds 0,1,2,3 --steps 0,1,2,4,1000:10000:1000",
        "trainmap pull pythia/ --size 160m --seeds 5 --steps 0:4000:1000 --cache-dir /data/hf-cache --offline",
    ],
    "labels": [
        "trainmap labels features.parquet",
        "trainmap labels runs/ --spike-rise 1.0 --json",
    ],
    "train": [
        "trainmap train features.parquet --horizon 60 -o models/edge-lr",
        "trainmap train features.parquet --horizon 1% 2% 5% 10% 25% -o models/edge-lr --exclude seed46 seed47",
        "trainmap train metrics.csv --run-column run_id --step-column iteration --labels labels.csv --horizon 500 -o models/mine",
    ],
    "score": [
        "trainmap score runs/seed23 --detector models/edge-lr",
        "trainmap score runs/seed23 --detector models/edge-lr --json",
        "trainmap score runs/seed23 --detector models/edge-lr --trust-pickles",
        "trainmap score --table metrics.csv --run run-7 --detector models/mine",
    ],
    "evaluate": [
        "trainmap evaluate features.parquet -o evaluation/",
        "trainmap evaluate features.parquet -o evaluation/ --horizon 5% 10% --methods detector hmm --folds 5",
        "trainmap evaluate features.parquet -o cross-scale/ --test-table width48.parquet",
    ],
    "map": [
        "trainmap map features.parquet --horizon 60 -o map.png",
        "trainmap map features.parquet --horizon 60 -o map.png --features hu --labels labels.csv",
    ],
    "demo": [
        "trainmap demo",
        "trainmap demo --workdir /tmp/trainmap-demo --seeds 32",
    ],
}


# Commands whose finished work survives an interrupt: extraction keeps each
# checkpoint's features in the result cache.
RESUMABLE = ("extract",)


def main(argv: list[str] | None = None) -> int:
    """Run the ``trainmap`` command line; return the exit status."""
    from trainmap.checkpoints.errors import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    # OpenMP threads that spin while waiting slow torch's linear algebra down many
    # times when another process competes for the cores; passive waiting avoids it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        # Expected user errors and damaged checkpoints: print the message, not a traceback.
        print(f"trainmap {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        message = f"trainmap {args.command}: interrupted"
        if args.command in RESUMABLE:
            message += "; run the same command again to resume, finished work is kept"
        # Start a new line: a progress bar may have been drawn without one.
        print(f"\n{message}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="trainmap",
        description="Predict which pre-training runs become outliers among their seeds, from early checkpoints.",
        epilog="Run `trainmap demo` to see every step end to end.",
    )
    parser.add_argument("--config", type=Path, help="TOML file with one table per command; the command line wins")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics (DEBUG level) to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_ensemble(commands)
    _add_extract(commands)
    _add_pull(commands)
    _add_labels(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_score(commands)
    _add_map(commands)
    _add_demo(commands)
    return parser


# ---------------------------------------------------------------- sub-commands


def _add_ensemble(commands) -> None:
    sub = _subparser(commands, "ensemble", "train a seed ensemble of tiny GPT-NeoX models on CPU")
    sub.add_argument("out_dir", type=Path, help="folder that receives one sub-folder per run")
    sub.add_argument("--seeds", type=int, help="number of runs (default 8)")
    sub.add_argument("--first-seed", type=int, help="seed of the first run (default 0)")
    sub.add_argument("--steps", type=int, help="optimizer steps per run (default 300)")
    sub.add_argument("--width", type=int, help="hidden size (default 64)")
    sub.add_argument("--layers", type=int, help="transformer blocks (default 2)")
    sub.add_argument("--heads", type=int, help="attention heads (default 4)")
    sub.add_argument("--seq-len", type=int, help="bytes per training window (default 64)")
    sub.add_argument("--batch-size", type=int, help="windows per step (default 16)")
    sub.add_argument("--learning-rate", type=float, help="peak AdamW learning rate (default 0.003)")
    sub.add_argument("--learning-rates", type=_float_list,
                     help="comma-separated peak learning rates cycled over runs (varies more than the seed)")
    sub.add_argument("--warmup", type=int, help="linear warm-up steps (default 30)")
    sub.add_argument("--beta1", type=float, help="AdamW beta1 (default 0.9)")
    sub.add_argument("--beta2", type=float, help="AdamW beta2 (default 0.95)")
    sub.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    sub.add_argument("--grad-clip", type=float, help="global gradient-norm clip, 0 disables (default 1.0)")
    sub.add_argument("--schedule", help="checkpoint steps, e.g. '0,1,2,4,8,50:300:50' (default: Pythia-like)")
    sub.add_argument("--n-evenly-spaced", type=int, help="evenly spaced checkpoints of the default schedule (default 10)")
    sub.add_argument("--eval-batches", type=int, help="held-out batches per eval loss (default 4)")
    sub.add_argument("--threads", type=int, help="torch threads per run, 0 for torch's default")
    sub.add_argument("--workers", type=int, default=None, help="runs trained at once, one process each (default 1)")
    sub.set_defaults(handler=_run_ensemble)


def _run_ensemble(args) -> int:
    from trainmap import tracking, workflows
    from trainmap.ensemble import EnsembleConfig

    config = _resolve(EnsembleConfig, args)
    workers = args.workers or _section(args, "ensemble").get("workers", 1)
    print(f"training {config.seeds} runs into {args.out_dir}; checkpoints at steps {config.checkpoint_steps()}")
    run_dirs = workflows.ensemble(config, args.out_dir, workers=workers)
    print(f"wrote {len(run_dirs)} runs under {args.out_dir}; MLflow store {tracking.tracking_uri()}")
    return 0


def _add_extract(commands) -> None:
    sub = _subparser(commands, "extract", "compute the feature table of every run's checkpoints")
    sub.add_argument("runs_dir", type=Path, help="a run folder, or a folder of run folders")
    sub.add_argument("-o", "--output", type=Path, required=True, help="output Parquet feature table")
    sub.add_argument("--features", dest="families",
                     help="comma-separated feature families from hu, layers, qk, unembed, scale, dynamics, loss, "
                          "or all (default hu,loss); docs/features.md defines each feature")
    sub.add_argument("--max-step", type=int, help="only checkpoints at steps <= this")
    sub.add_argument("--workers", type=int, help="checkpoints extracted at once, one process each (default 1)")
    sub.add_argument("--executor", choices=["local", "ray"],
                     help="local process pool, or Ray (pip install 'trainmap[ray]'; default local)")
    sub.add_argument("--device", help="cpu or cuda: where singular values are computed (default cpu)")
    sub.add_argument("--cache-dir", help="result cache (default .OUTPUT.cache/ beside the output)")
    sub.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                     help="recompute every checkpoint and store nothing")
    _add_trust_pickles(sub)
    sub.set_defaults(handler=_run_extract)


def _run_extract(args) -> int:
    from trainmap import workflows

    config = _resolve(workflows.ExtractConfig, args)
    table, summary = workflows.extract(args.runs_dir, args.output, config)
    print(f"wrote {len(table)} rows ({table['run'].nunique()} runs) to {args.output}")
    for line in summary.lines():
        print(line)
    return 0


def _add_pull(commands) -> None:
    sub = _subparser(commands, "pull", "download Pythia or PolyPythias checkpoints into run folders")
    sub.add_argument("out_dir", type=Path, help="folder that receives one pythia-<size>-seed<k>/ run folder per seed")
    sub.add_argument("--size", required=True, help="model size, e.g. 14m, 160m, 410m, 1.4b")
    sub.add_argument("--seeds", type=_int_list, default=[0],
                     help="comma-separated seeds; 0 is EleutherAI/pythia-<size>, k is ...-seed<k> (default 0)")
    sub.add_argument("--steps", required=True,
                     help="training steps, e.g. '0,1,2,4,1000:10000:1000' (start:stop:stride, stop included)")
    sub.add_argument("--cache-dir", type=Path, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    sub.add_argument("--offline", action="store_true", default=None,
                     help="read only the cache, never the network (default: follow HF_HUB_OFFLINE)")
    sub.set_defaults(handler=_run_pull)


def _run_pull(args) -> int:
    from trainmap import workflows
    from trainmap.checkpoints.hub import parse_steps

    steps = parse_steps(args.steps)
    pulled = workflows.pull(args.size, args.seeds, steps, args.out_dir, args.cache_dir, args.offline)
    runs = sorted({item.path.parent.name for item in pulled})
    print(f"linked {len(pulled)} checkpoints of {len(runs)} runs under {args.out_dir}: {', '.join(runs)}")
    return 0


def _add_labels(commands) -> None:
    sub = _subparser(commands, "labels", "print each run's outlier label and the reason")
    sub.add_argument("source", type=Path, help="feature table (Parquet, CSV, TSV) or a folder of runs")
    _add_label_options(sub)
    _add_table_options(sub)
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.set_defaults(handler=_run_labels)


def _run_labels(args) -> int:
    from trainmap import workflows
    from trainmap.models.labels import label_lines
    from trainmap.models.training import TrainConfig

    config = _resolve(TrainConfig, args)
    frame, rule = workflows.labels(args.source, config, _resolve(workflows.TableOptions, args))
    if args.json:
        print(frame.to_json(orient="records", indent=2))
        return 0
    print(f"rule: {rule.describe() if not config.labels else 'labels from ' + config.labels}")
    print("\n".join(label_lines(frame)))
    print(f"{int((frame['label'] == 1).sum())} outlier(s) among {len(frame)} runs")
    return 0


def _add_train(commands) -> None:
    sub = _subparser(commands, "train", "train, cross-validate, save and register an outlier detector")
    sub.add_argument("table", type=Path, help="feature table (Parquet, CSV or TSV)")
    sub.add_argument("--horizon", nargs="+",
                     help="horizons as steps or percentages of training, one detector each (default 1%% 2%% 5%% 10%% 25%%)")
    sub.add_argument("-o", "--output", type=Path, required=True, help="detector folder, e.g. models/NAME")
    _add_label_options(sub)
    _add_table_options(sub)
    _add_detector_options(sub)
    sub.add_argument("--exclude", nargs="+", help="runs kept out of training")
    sub.add_argument("--name", help="registered model name in MLflow (default: the output folder name)")
    sub.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from trainmap import workflows
    from trainmap.models.training import TrainConfig

    config = _resolve(TrainConfig, args)
    result = workflows.train(args.table, args.output, config, table_options=_resolve(workflows.TableOptions, args))
    print(f"labels: {result.rule.describe() if not config.labels else 'from ' + config.labels}")
    largest = result.artifact.models[-1]
    print(f"trained on {len(largest.runs)} runs ({int(largest.labels.sum())} outliers); detector kind "
          f"{result.detector_params['kind']}, calibration {result.detector_params['calibration']}")
    print(_format_metrics(result.cv_table))
    print(f"detector saved to {args.output}; registered as {config.name or args.output.name} "
          f"version {result.registered_version}")
    return 0


def _add_evaluate(commands) -> None:
    sub = _subparser(commands, "evaluate", "compare the detector with baselines on the same splits by run")
    sub.add_argument("table", type=Path, help="feature table (Parquet, CSV or TSV)")
    sub.add_argument("-o", "--output", type=Path, required=True,
                     help="folder for metrics.csv, predictions.csv and auroc.png")
    sub.add_argument("--horizon", nargs="+", help="horizons as steps or percentages (default 1%% 2%% 5%% 10%% 25%%)")
    sub.add_argument("--methods", nargs="+", help="methods to compare (default detector early_loss last_checkpoint hmm)")
    sub.add_argument("--n-boot", type=int, help="bootstrap resamples for the 95%% intervals (default 1000)")
    sub.add_argument("--test-table", help="evaluate models trained on TABLE on this other ensemble's table")
    _add_label_options(sub)
    _add_table_options(sub)
    _add_detector_options(sub)
    sub.add_argument("--exclude", nargs="+", help="runs left out of the evaluation")
    sub.set_defaults(handler=_run_evaluate)


def _run_evaluate(args) -> int:
    from trainmap import workflows
    from trainmap.models.training import TrainConfig

    config = _resolve(TrainConfig, args)
    options = _resolve(workflows.EvaluateConfig, args)
    report = workflows.evaluate(args.table, args.output, config, options,
                                table_options=_resolve(workflows.TableOptions, args))
    print(f"labels: {report['rule']}")
    print(f"{report['n_runs']} runs, {report['n_outliers']} outliers; splits: {report['scheme']}; "
          f"detector kind {report['detector_params']['kind']}")
    print(_format_metrics(report["metrics"]))
    for name, path in report["files"].items():
        print(f"{name}: {path}")
    return 0


def _add_score(commands) -> None:
    sub = _subparser(commands, "score", "score a run's early checkpoints against a detector")
    sub.add_argument("run_dir", type=Path, nargs="?", help="run folder holding step<N> checkpoints")
    sub.add_argument("--detector", type=Path, required=True, help="detector folder written by `trainmap train`")
    sub.add_argument("--table", type=Path, help="score a run of this feature table instead of a run folder")
    sub.add_argument("--run", help="with --table: the run to score")
    _add_table_options(sub)
    sub.add_argument("--top", type=int, default=10, help="number of features to list (default 10)")
    sub.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_trust_pickles(sub)
    sub.set_defaults(handler=_run_score)


def _run_score(args) -> int:
    from trainmap import workflows

    if (args.run_dir is None) == (args.table is None):
        raise ValueError("give either a run folder or --table with --run")
    if args.table is not None and not args.run:
        raise ValueError("--table needs --run to name the run to score")
    result = workflows.score(args.run_dir, args.detector, top=args.top, progress=not args.json,
                             table_path=args.table, run=args.run,
                             table_options=_resolve(workflows.TableOptions, args),
                             trust_pickles=bool(args.trust_pickles))
    print(workflows.to_json(result) if args.json else "\n".join(result.lines()))
    return 0


def _add_map(commands) -> None:
    sub = _subparser(commands, "map", "draw the training map of a feature table")
    sub.add_argument("table", type=Path, help="feature table (Parquet, CSV or TSV)")
    sub.add_argument("--horizon", help="last step drawn: a step such as 60 or a percentage such as 25%% (required)")
    sub.add_argument("-o", "--output", type=Path, required=True, help="image file (.png, .svg or .pdf)")
    sub.add_argument("--threshold", type=float, help="label threshold, as for train (default 3.5)")
    sub.add_argument("--label-metric", help="outcome column for labels (default loss/eval)")
    sub.add_argument("--labels", help="CSV with run,label that replaces the rule")
    sub.add_argument("--features", help="comma-separated families or column prefixes (default all)")
    sub.add_argument("--random-state", type=int, help="UMAP seed (default 0)")
    _add_table_options(sub)
    sub.set_defaults(handler=_run_map)


def _run_map(args) -> int:
    from trainmap import workflows

    config = _resolve(workflows.MapConfig, args)
    if config.horizon is None:
        raise ValueError("a horizon is required: pass --horizon STEP")
    path = workflows.draw_map(args.table, args.output, config, table_options=_resolve(workflows.TableOptions, args))
    print(f"wrote the training map to {path}")
    return 0


def _add_demo(commands) -> None:
    sub = _subparser(commands, "demo", "run the whole job on a small CPU ensemble (about 2.5 minutes on 2 cores)")
    sub.add_argument("--workdir", help="output folder (default ./trainmap-demo)")
    sub.add_argument("--seeds", type=int, help="runs in the ensemble (default 32)")
    sub.add_argument("--horizon", nargs="+", help="detector horizons, steps or percentages (default 5%% 10%% 20%%)")
    sub.add_argument("--workers", type=int, help="runs trained at once (default 2)")
    sub.add_argument("--threshold", type=float, help="label threshold (default 3.5)")
    sub.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from trainmap.demo import DemoConfig, run_demo

    config = _resolve(DemoConfig, args)
    if args.seeds is not None:
        config.ensemble.seeds = args.seeds
    run_demo(config)
    return 0


# ---------------------------------------------------------------- helpers


def _add_label_options(sub) -> None:
    sub.add_argument("--threshold", type=float, help="modified z-score above which a run is an outlier (default 3.5)")
    sub.add_argument("--label-metric", help="outcome column read at each run's final step (default loss/eval)")
    sub.add_argument("--spike-rise", type=float,
                     help="label runs whose smoothed train loss rises this many nats above its running minimum "
                          "and never recovers (default: rule off)")
    sub.add_argument("--spike-window", type=int, help="trailing-mean window of the spike rule, in steps (default 10)")
    sub.add_argument("--spike-tolerance", type=float,
                     help="distance above the pre-spike minimum that counts as recovered (default spike-rise/2)")
    sub.add_argument("--labels", help="CSV with run,label that replaces the rules")


def _add_table_options(sub) -> None:
    sub.add_argument("--run-column", help="run column of a table made by another tool (default run)")
    sub.add_argument("--step-column", help="step column of a table made by another tool (default step)")


def _add_detector_options(sub) -> None:
    sub.add_argument("--features", help="comma-separated families or column prefixes (default all)")
    sub.add_argument("--folds", type=int, help="stratified folds of runs (default: leave one run out)")
    sub.add_argument("--random-state", type=int, help="seed of the detector, folds and map (default 0)")
    sub.add_argument("--kind", choices=["auto", "trees", "centroid"],
                     help="detector model: XGBoost trees, shrunken centroid, or auto by outlier count (default auto)")
    sub.add_argument("--min-tree-positives", type=int, help="fewest outliers for which auto picks trees (default 5)")
    sub.add_argument("--centroid-features", type=int, help="columns the shrunken centroid keeps (default 20)")
    sub.add_argument("--calibration", choices=["auto", "sigmoid", "none"],
                     help="sigmoid calibration of probabilities (default auto: with >= 4 outliers)")
    sub.add_argument("--n-estimators", type=int, help="boosting rounds (default 200)")
    sub.add_argument("--max-depth", type=int, help="tree depth (default 2)")
    sub.add_argument("--learning-rate", type=float, help="boosting shrinkage (default 0.05)")
    sub.add_argument("--min-child-weight", type=float, help="minimum hessian per leaf (default 0.01)")
    sub.add_argument("--colsample-bytree", type=float, help="column fraction per tree (default 0.5)")


def _format_metrics(metrics) -> str:
    """Return a metrics table (per method and horizon) as aligned text."""
    columns = [c for c in ("method", "horizon", "fraction", "auroc", "auroc_low", "auroc_high",
                           "average_precision", "brier") if c in metrics.columns]
    return metrics[columns].to_string(index=False, float_format=lambda value: f"{value:.3f}")


def _subparser(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {line}" for line in EXAMPLES[name])
    return commands.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_trust_pickles(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--trust-pickles", action="store_true", default=None,
        help="fully unpickle torch files that need Python globals (e.g. argparse.Namespace); this can "
             "run code from the files, so use it only for files you trust; such checkpoints get "
             "flag/trusted_pickle",
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _section(args, command: str) -> dict:
    """Return the ``[command]`` table of the ``--config`` file, or {}."""
    if not args.config:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    if not args.config.is_file():
        raise FileNotFoundError(f"config file {args.config} does not exist")
    with open(args.config, "rb") as stream:
        try:
            data = tomllib.load(stream)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config file {args.config} is not valid TOML: {error}") from None
    return data.get(command, {})


# Configuration dataclasses of each command, as "module:Class"; a config file's
# [command] table may set any of their fields.
COMMAND_CONFIGS = {
    "ensemble": ["trainmap.ensemble.trainer:EnsembleConfig"],
    "extract": ["trainmap.workflows:ExtractConfig"],
    "labels": ["trainmap.models.training:TrainConfig", "trainmap.workflows:TableOptions"],
    "train": ["trainmap.models.training:TrainConfig", "trainmap.workflows:TableOptions"],
    "evaluate": ["trainmap.models.training:TrainConfig", "trainmap.workflows:EvaluateConfig",
                 "trainmap.workflows:TableOptions"],
    "score": ["trainmap.workflows:TableOptions"],
    "map": ["trainmap.workflows:MapConfig", "trainmap.workflows:TableOptions"],
    "demo": ["trainmap.demo:DemoConfig"],
}
EXTRA_KEYS = {"ensemble": {"workers"}}


def _resolve(config_class, args):
    """Build ``config_class`` from defaults, the config file, then the command line."""
    import importlib

    fields = {field.name for field in dataclasses.fields(config_class)}
    section = _section(args, args.command)
    allowed = set(EXTRA_KEYS.get(args.command, set()))
    for dotted in COMMAND_CONFIGS.get(args.command, []):
        module, name = dotted.split(":")
        allowed |= {field.name for field in dataclasses.fields(getattr(importlib.import_module(module), name))}
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(
            f"config file {args.config} [{args.command}] has unknown key(s) {unknown}; "
            f"allowed: {sorted(allowed)}"
        )
    values = {key: value for key, value in section.items() if key in fields}
    for name in fields:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return config_class(**values)


def _float_list(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("trainmap").setLevel(logging.DEBUG if verbose else logging.INFO)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
