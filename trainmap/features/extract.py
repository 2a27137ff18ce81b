"""Turn checkpoints into feature-table rows.

Each checkpoint is read tensor by tensor. Every tensor is checked for non-finite
values and handed to each feature family. Families that need another look (the
exact median of ``hu/``, the gain-scaled query-key products of ``qk/``) get more
streaming passes; :mod:`trainmap.features.family` describes the protocol. A
checkpoint that cannot be read becomes a flagged row and extraction goes on.
Only :class:`~trainmap.checkpoints.CheckpointError` (numbers would be
meaningless) stops it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainmap.checkpoints import (
    READER_FLAGS,
    RUN_FLAGS,
    CheckpointError,
    CheckpointRef,
    Run,
    RunIntegrity,
    open_checkpoint,
)
from trainmap.features import dynamics, hu, layers, losses, qk, scale, unembed
from trainmap.features.family import CheckpointContext
from trainmap.features.gpt_neox import read_config
from trainmap.features.spectra import SpectrumCache

logger = logging.getLogger(__name__)

TENSOR_FAMILIES = {
    hu.FAMILY: hu.HuFamily,
    layers.FAMILY: layers.LayersFamily,
    qk.FAMILY: qk.QueryKeyFamily,
    unembed.FAMILY: unembed.UnembeddingFamily,
    scale.FAMILY: scale.ScaleFamily,
    dynamics.FAMILY: dynamics.DynamicsFamily,
}
ALL_FAMILIES = (*TENSOR_FAMILIES, losses.FAMILY)
DEFAULT_FAMILIES = (hu.FAMILY, losses.FAMILY)
# Feature names known before reading a checkpoint; the other families name
# features per layer or per module type found in the checkpoint.
STATIC_FEATURES = {hu.FAMILY: hu.FEATURES, unembed.FAMILY: unembed.FEATURES}
FLAGS = ("flag/nonfinite", "flag/incomplete", "flag/unreadable", "flag/error", *READER_FLAGS, *RUN_FLAGS)
# Flags that mark a defect, counted by name in the summary; the other flags are notes.
COUNTED_FLAGS = {
    "flag/duplicate_of": "duplicate",
    "flag/same_as_final": "same_as_final",
    "flag/gap_before": "gap",
    "flag/architecture_change": "architecture_change",
    "flag/trusted_pickle": "trusted_pickle",
}


@dataclass
class ExtractionSummary:
    """Counts of checkpoints an extraction read, flagged and skipped.

    Attributes
    ----------
    read : int
        Checkpoints whose tensors were read.
    flagged : Counter
        Checkpoints per flag name (``nonfinite``, ``incomplete``, ``unreadable``,
        ``duplicate``, ``same_as_final``, ``gap``, ``architecture_change``,
        ``trusted_pickle``).
    skipped : list of (str, str)
        ``(checkpoint path, reason)`` for each checkpoint with no features.
    gaps : dict of str to list of int
        Steps missing from each run's regular schedule.
    families_skipped : Counter
        Checkpoints per ``(family, reason)`` for families that computed nothing.
    computed, from_cache : int
        Checkpoints extracted now, and taken from the result cache.
    """

    read: int = 0
    flagged: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    gaps: dict[str, list[int]] = field(default_factory=dict)
    families_skipped: Counter = field(default_factory=Counter)
    computed: int = 0
    from_cache: int = 0

    def lines(self) -> list[str]:
        """Return the summary as printable lines."""
        total = self.computed + self.from_cache
        lines = [
            f"checkpoints: {total} ({self.computed} extracted now, {self.from_cache} from the cache), "
            f"{self.read} read without errors"
        ]
        if self.flagged:
            counts = ", ".join(f"{name}: {count}" for name, count in sorted(self.flagged.items()))
            lines.append(f"checkpoints flagged: {sum(self.flagged.values())} ({counts})")
        else:
            lines.append("checkpoints flagged: 0")
        lines.append(f"checkpoints skipped: {len(self.skipped)}")
        lines.extend(f"  {path}: {reason}" for path, reason in self.skipped)
        for run, steps in sorted(self.gaps.items()):
            lines.append(f"run {run} is missing scheduled steps {', '.join(map(str, steps))}")
        for (family, reason), count in sorted(self.families_skipped.items()):
            lines.append(f"feature family {family}/ skipped for {count} checkpoint(s): {reason}")
        return lines


def resolve_families(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate a family selection such as ``"hu,layers,loss"``; None or ``"all"`` selects all.

    Raises
    ------
    ValueError
        If a name is not a family, or the selection is empty.
    """
    if names is None:
        return ALL_FAMILIES
    if isinstance(names, str):
        names = [name.strip().rstrip("/") for name in names.split(",") if name.strip()]
    if list(names) == ["all"]:
        return ALL_FAMILIES
    unknown = [name for name in names if name not in ALL_FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown feature family {', '.join(unknown)}; choose from {', '.join(ALL_FAMILIES)} or all"
        )
    if not names:
        raise ValueError(f"no feature family selected; choose from {', '.join(ALL_FAMILIES)} or all")
    return tuple(dict.fromkeys(names))


def extract_checkpoint(
    ref: CheckpointRef,
    families: tuple[str, ...] = (hu.FAMILY,),
    integrity: RunIntegrity | None = None,
    previous: CheckpointRef | None = None,
    initial: CheckpointRef | None = None,
) -> dict:
    """Compute the tensor features and flags of one checkpoint.

    Parameters
    ----------
    ref : CheckpointRef
        The checkpoint.
    families : tuple of str
        Feature families; families that are not tensor families are ignored.
    integrity : RunIntegrity, optional
        Collects the run-level flags; without it ``flag/gap_before`` and
        ``flag/architecture_change`` keep their defaults.
    previous, initial : CheckpointRef, optional
        The run's closest earlier checkpoint and its step-0 checkpoint, read by
        ``dynamics/``; :func:`extract_runs` finds them.

    Returns
    -------
    dict
        ``run``, ``step``, one entry per feature of the selected tensor families
        (NaN where not computable) and the ``flag/*`` entries.

    Raises
    ------
    CheckpointError
        If the checkpoint is damaged in a way that makes its numbers meaningless.
    """
    row, skipped, _ = _extract_checkpoint(ref, families, integrity, previous, initial)
    for family, reason in skipped.items():
        logger.info("checkpoint %s: feature family %s/ skipped: %s", ref.path, family, reason)
    return row


def extract_runs(
    runs: list[Run],
    families: tuple[str, ...] = DEFAULT_FAMILIES,
    max_step: int | None = None,
    progress: bool = True,
    workers: int = 1,
    executor: str = "local",
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> tuple[pd.DataFrame, ExtractionSummary]:
    """Extract the feature table of ``runs``.

    Parameters
    ----------
    runs : list of Run
        Runs from :func:`~trainmap.checkpoints.find_runs`.
    families : tuple of str
        Feature families; see :func:`resolve_families`. The default is
        ``DEFAULT_FAMILIES`` (``hu`` and ``loss``).
    max_step : int, optional
        Only checkpoints at steps <= ``max_step`` (for scoring up to a horizon).
    progress : bool
        Show a progress bar on stderr.
    workers : int
        Checkpoints extracted at once, each in its own process.
    executor : {"local", "ray"}
        Where the workers run; see :func:`trainmap.features.engine.run_jobs`.
    cache_dir : str or Path, optional
        Result cache; a rerun computes only checkpoints it lacks.
    device : str
        Device of the linear algebra (``"cpu"`` or ``"cuda"``).

    Returns
    -------
    table : pandas.DataFrame
        One row per (run, step), sorted.
    summary : ExtractionSummary
    """
    from trainmap.checkpoints import pickles_trusted
    from trainmap.features.engine import Job, ResultCache, run_jobs

    _check_device(device)
    checkpoints = [
        ref
        for run in runs
        for ref in run.checkpoints
        if max_step is None or ref.step <= max_step
    ]
    neighbours = causal_neighbours(checkpoints)
    trust = pickles_trusted()
    jobs = [Job(ref, tuple(families), *neighbours[ref], device=device, trust_pickles=trust) for ref in checkpoints]
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    results, computed = run_jobs(jobs, compute_job, workers, executor, cache, progress)

    summary = ExtractionSummary(computed=computed, from_cache=len(checkpoints) - computed)
    integrity = {run.name: RunIntegrity(run) for run in runs}
    rows = []
    for ref in sorted(checkpoints, key=lambda other: (other.run, other.step)):
        result = results[ref]
        row = dict(result.row)
        row["flag/gap_before"] = integrity[ref.run].gap_before(ref.step)
        if result.digest is not None:
            row.update(integrity[ref.run].observe(ref.step, result.digest, _shapes(result.parameters)))
        rows.append((ref, row))
        for family, reason in result.skipped.items():
            if not summary.families_skipped[(family, reason)]:
                logger.warning("run %s: feature family %s/ skipped: %s", ref.run, family, reason)
            summary.families_skipped[(family, reason)] += 1
    run_flags = {name: checker.run_flags() for name, checker in integrity.items()}
    for ref, row in rows:
        row.update(run_flags[ref.run].get(ref.step, {}))
        _record(summary, ref, row)
    summary.gaps = {name: checker.gaps for name, checker in integrity.items() if checker.gaps}

    table = pd.DataFrame([row for _, row in rows])
    if losses.FAMILY in families:
        table = _add_loss_features(table, runs)
    ordered = ["run", "step"] + [c for c in table.columns if c not in ("run", "step") and c not in FLAGS] + list(FLAGS)
    table = table[ordered].sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    return table, summary


def compute_job(job) -> "CheckpointResult":
    """Extract one checkpoint job; module-level so worker processes and Ray can run it."""
    from trainmap.checkpoints import trusted_pickles
    from trainmap.features.engine import CheckpointResult

    with trusted_pickles(job.trust_pickles):
        row, skipped, reader = _extract_checkpoint(job.ref, job.families, None, job.previous, job.initial,
                                                   job.device)
    if reader is None:
        return CheckpointResult(row, skipped)
    parameters = {name: list(shape) for name, shape in reader.parameters().items()}
    return CheckpointResult(row, skipped, row["flag/digest"], parameters)


def causal_neighbours(
    checkpoints: list[CheckpointRef],
) -> dict[CheckpointRef, tuple[CheckpointRef | None, CheckpointRef | None]]:
    """Map each checkpoint to its run's closest earlier complete checkpoint and step-0 checkpoint.

    Only checkpoints in ``checkpoints`` at lower steps (or step 0) qualify, so
    features computed from them use steps <= the checkpoint's own step only. A
    step-0 checkpoint is its own step-0 checkpoint; either entry is None when
    there is no such checkpoint.
    """
    by_run: dict[str, list[CheckpointRef]] = {}
    for ref in checkpoints:
        by_run.setdefault(ref.run, []).append(ref)
    neighbours = {}
    for run_checkpoints in by_run.values():
        previous = initial = None
        for ref in sorted(run_checkpoints, key=lambda other: other.step):
            neighbours[ref] = (previous, ref if ref.step == 0 else initial)
            if ref.complete:
                previous = ref
                if ref.step == 0:
                    initial = ref
    return neighbours


def _extract_checkpoint(ref, families, integrity, previous, initial, device: str = "cpu"):
    """Return the row of one checkpoint, ``{family: reason}`` for families that computed
    nothing, and the reader (None when the checkpoint could not be read)."""
    row = {"run": ref.run, "step": ref.step, "flag/nonfinite": 0,
           "flag/incomplete": False, "flag/unreadable": False, "flag/error": "",
           **READER_FLAGS, **RUN_FLAGS}
    if integrity is not None:
        row["flag/gap_before"] = integrity.gap_before(ref.step)
    names = [feature for name in families for feature in STATIC_FEATURES.get(name, ())]
    row.update(dict.fromkeys(names, math.nan))
    if not ref.complete:
        row["flag/incomplete"] = True
        row["flag/error"] = "no weight file in the checkpoint folder (interrupted save?)"
        return row, {}, None
    from safetensors import SafetensorError

    spectra = SpectrumCache((hu.ZERO_SINGULAR_VALUE,), helper_thread=True, device=device)
    context = CheckpointContext(ref, read_config(ref.path), previous, initial, spectra)
    selected = [TENSOR_FAMILIES[name](context) for name in families if name in TENSOR_FAMILIES]
    try:
        reader = open_checkpoint(ref)
        reader.start_hashing()
        row["flag/nonfinite"] = _first_pass(reader, selected)
        _more_passes(reader, selected)
        row.update(reader.flags())
        for family in selected:
            row.update(family.finish())
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:
        row["flag/unreadable"] = True
        row["flag/error"] = f"{type(error).__name__}: {error}"
        return row, {}, None
    if integrity is not None:
        row.update(integrity.observe(ref.step, row["flag/digest"], reader.parameters()))
    skipped = {family.name: family.skip_reason for family in selected if family.skip_reason}
    return row, skipped, reader


def _shapes(parameters: dict | None) -> dict[str, tuple[int, ...]]:
    return {name: tuple(shape) for name, shape in (parameters or {}).items()}


def _check_device(device: str) -> None:
    """Reject a device torch cannot use here, naming what to do instead."""
    import torch

    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} needs a CUDA GPU, and torch sees none; use --device cpu")
        return
    raise ValueError(f"invalid --device {device!r}; use cpu or cuda (cuda:N for a given GPU)")


def _first_pass(reader, families) -> int:
    """Feed every tensor to every family; return the count of non-finite values."""
    nonfinite = 0
    for name, tensor in reader.tensors():
        finite = True
        if tensor.is_floating_point():
            bad = reader.nonfinite.get(name, 0)  # counted by the reader in bounded memory
            if bad:
                nonfinite += bad
                finite = False
                logger.warning("checkpoint %s: tensor %s has %d non-finite values", reader.ref.path, name, bad)
        for family in families:
            family.visit(name, tensor, finite)
    return nonfinite


def _more_passes(reader, families) -> None:
    """Stream the tensors that families request again, until no family requests a pass."""
    while True:
        requested = {family: set(family.revisit_names()) for family in families}
        names = sorted(set().union(*requested.values())) if requested else []
        if not names:
            return
        for name, tensor in reader.tensors(names):
            for family, family_names in requested.items():
                if name in family_names:
                    family.revisit(name, tensor)


def _record(summary: ExtractionSummary, ref: CheckpointRef, row: dict) -> None:
    """Count one row into the summary."""
    if row["flag/incomplete"] or row["flag/unreadable"]:
        summary.skipped.append((str(ref.path), row["flag/error"]))
        summary.flagged["incomplete" if row["flag/incomplete"] else "unreadable"] += 1
        logger.warning("checkpoint %s skipped: %s", ref.path, row["flag/error"])
        return
    summary.read += 1
    if row["flag/nonfinite"]:
        summary.flagged["nonfinite"] += 1
    defaults = {**READER_FLAGS, **RUN_FLAGS}
    for flag, name in COUNTED_FLAGS.items():
        if row[flag] != defaults[flag]:
            summary.flagged[name] += 1


def _add_loss_features(table: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """Join the ``loss/`` features read from each run's ``metrics.jsonl``."""
    frames = []
    for run in runs:
        steps = sorted(table.loc[table["run"] == run.name, "step"].tolist())
        if not steps:
            continue
        series = losses.read_metrics(run.metrics_path)
        for key, values in run.loss_history().items():
            # metrics.jsonl wins over the Trainer's trainer_state.json log.
            series[key] = {**values, **series.get(key, {})}
        per_step = losses.loss_features(series, steps)
        frame = pd.DataFrame.from_dict(per_step, orient="index")
        frame.index.name = "step"
        frame = frame.reset_index()
        frame.insert(0, "run", run.name)
        frames.append(frame)
    if not frames:
        return table
    return table.merge(pd.concat(frames, ignore_index=True), on=["run", "step"], how="left")
