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
        "trainmap extract runs/ -o early.parquet --features hu --max-step 60",
        "trainmap extract runs/ -o rich.parquet --features hu,layers,qk,dynamics,loss",
    ],
    "labels": [
        "trainmap labels features.parquet",
        "trainmap labels features.parquet --threshold 3.0 --json",
    ],
    "train": [
        "trainmap train features.parquet --horizon 60 -o models/edge-lr",
        "trainmap train features.parquet --horizon 60 -o models/hu-only --features hu --exclude seed22 seed23",
    ],
    "score": [
        "trainmap score runs/seed23 --detector models/edge-lr",
        "trainmap score runs/seed23 --detector models/edge-lr --json",
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


def main(argv: list[str] | None = None) -> int:
    """Run the ``trainmap`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    # OpenMP threads that spin while waiting slow torch's linear algebra down many
    # times when another process competes for the cores; passive waiting avoids it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        # Expected user errors: print the message, not a traceback.
        print(f"trainmap {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trainmap {args.command}: interrupted", file=sys.stderr)
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
    _add_labels(commands)
    _add_train(commands)
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
    sub.set_defaults(handler=_run_extract)


def _run_extract(args) -> int:
    from trainmap import workflows

    config = _resolve(workflows.ExtractConfig, args)
    table, summary = workflows.extract(args.runs_dir, args.output, config)
    print(f"wrote {len(table)} rows ({table['run'].nunique()} runs) to {args.output}")
    for line in summary.lines():
        print(line)
    return 0


def _add_labels(commands) -> None:
    sub = _subparser(commands, "labels", "print each run's outlier label and the reason")
    sub.add_argument("table", type=Path, help="feature table (Parquet)")
    sub.add_argument("--threshold", type=float, default=3.5, help="modified z-score above which a run is an outlier")
    sub.add_argument("--label-metric", default="loss/eval", help="outcome column read at each run's final step")
    sub.add_argument("--labels", help="CSV with run,label that replaces the rule")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.set_defaults(handler=_run_labels)


def _run_labels(args) -> int:
    from trainmap import workflows
    from trainmap.features import read_table

    table = read_table(args.table)
    frame, rule = workflows.labels(table, args.threshold, args.label_metric, args.labels)
    if args.json:
        print(frame.to_json(orient="records", indent=2))
        return 0
    print(f"rule: {rule.describe() if not args.labels else 'labels from ' + args.labels}")
    print(frame[["run", "label", "reason"]].to_string(index=False))
    print(f"{int((frame['label'] == 1).sum())} outlier(s) among {len(frame)} runs")
    return 0


def _add_train(commands) -> None:
    sub = _subparser(commands, "train", "train, cross-validate, save and register an outlier detector")
    sub.add_argument("table", type=Path, help="feature table (Parquet)")
    sub.add_argument("--horizon", type=int, help="last step the detector may look at (required)")
    sub.add_argument("-o", "--output", type=Path, required=True, help="detector folder, e.g. models/NAME")
    sub.add_argument("--threshold", type=float, help="modified z-score above which a run is an outlier (default 3.5)")
    sub.add_argument("--label-metric", help="outcome column read at each run's final step (default loss/eval)")
    sub.add_argument("--labels", help="CSV with run,label that replaces the rule")
    sub.add_argument("--features", help="comma-separated families or column prefixes (default all)")
    sub.add_argument("--exclude", nargs="+", help="runs kept out of training")
    sub.add_argument("--name", help="registered model name in MLflow (default: the output folder name)")
    sub.add_argument("--random-state", type=int, help="seed of the detector and the map (default 0)")
    sub.add_argument("--n-estimators", type=int, help="boosting rounds (default 200)")
    sub.add_argument("--max-depth", type=int, help="tree depth (default 2)")
    sub.add_argument("--learning-rate", type=float, help="boosting shrinkage (default 0.05)")
    sub.add_argument("--min-child-weight", type=float, help="minimum hessian per leaf (default 0.01)")
    sub.add_argument("--colsample-bytree", type=float, help="column fraction per tree (default 0.5)")
    sub.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from trainmap import workflows
    from trainmap.models.training import TrainConfig

    config = _resolve(TrainConfig, args)
    if config.horizon is None:
        raise ValueError("a horizon is required: pass --horizon STEP")
    result = workflows.train(args.table, args.output, config)
    cv = result.cv_metrics
    print(f"labels: {result.rule.describe() if not config.labels else 'from ' + config.labels}")
    print(f"trained on {cv['n_runs']} runs ({cv['n_outliers']} outliers) at horizon step {config.horizon}, "
          f"{len(result.artifact.spec.columns)} run-vector columns")
    print(f"leave-one-run-out CV: AUROC {cv['auroc']:.3f}, average precision {cv['average_precision']:.3f}, "
          f"Brier {cv['brier']:.3f}")
    print(f"detector saved to {args.output}; registered as {config.name or args.output.name} "
          f"version {result.registered_version}")
    return 0


def _add_score(commands) -> None:
    sub = _subparser(commands, "score", "score a run's early checkpoints against a detector")
    sub.add_argument("run_dir", type=Path, help="run folder holding step<N> checkpoints")
    sub.add_argument("--detector", type=Path, required=True, help="detector folder written by `trainmap train`")
    sub.add_argument("--top", type=int, default=10, help="number of features to list (default 10)")
    sub.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub.set_defaults(handler=_run_score)


def _run_score(args) -> int:
    from trainmap import workflows

    result = workflows.score(args.run_dir, args.detector, top=args.top, progress=not args.json)
    print(workflows.to_json(result) if args.json else "\n".join(result.lines()))
    return 0


def _add_map(commands) -> None:
    sub = _subparser(commands, "map", "draw the training map of a feature table")
    sub.add_argument("table", type=Path, help="feature table (Parquet)")
    sub.add_argument("--horizon", type=int, help="last step drawn (required)")
    sub.add_argument("-o", "--output", type=Path, required=True, help="image file (.png, .svg or .pdf)")
    sub.add_argument("--threshold", type=float, help="label threshold, as for train (default 3.5)")
    sub.add_argument("--label-metric", help="outcome column for labels (default loss/eval)")
    sub.add_argument("--labels", help="CSV with run,label that replaces the rule")
    sub.add_argument("--features", help="comma-separated families or column prefixes (default all)")
    sub.add_argument("--random-state", type=int, help="UMAP seed (default 0)")
    sub.set_defaults(handler=_run_map)


def _run_map(args) -> int:
    from trainmap import workflows

    config = _resolve(workflows.MapConfig, args)
    if config.horizon is None:
        raise ValueError("a horizon is required: pass --horizon STEP")
    path = workflows.draw_map(args.table, args.output, config)
    print(f"wrote the training map to {path}")
    return 0


def _add_demo(commands) -> None:
    sub = _subparser(commands, "demo", "run the whole job on a small CPU ensemble (about 5 minutes)")
    sub.add_argument("--workdir", help="output folder (default ./trainmap-demo)")
    sub.add_argument("--seeds", type=int, help="runs in the ensemble (default 24)")
    sub.add_argument("--horizon", type=int, help="detector horizon step (default 60 of 300)")
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


def _subparser(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {line}" for line in EXAMPLES[name])
    return commands.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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


def _resolve(config_class, args):
    """Build ``config_class`` from defaults, the config file, then the command line."""
    fields = {field.name for field in dataclasses.fields(config_class)}
    values = {}
    section = _section(args, args.command)
    unknown = sorted(set(section) - fields - {"workers"})
    if unknown:
        raise ValueError(
            f"config file {args.config} [{args.command}] has unknown key(s) {unknown}; "
            f"allowed: {sorted(fields)}"
        )
    values.update({key: value for key, value in section.items() if key in fields})
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
