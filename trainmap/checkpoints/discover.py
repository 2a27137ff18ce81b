"""Discover runs and their checkpoints in a folder tree.

A run is a folder that contains checkpoints. A checkpoint is either

- a folder named ``step<N>`` (Pythia revisions, ``trainmap ensemble``),
  ``checkpoint-<N>`` (Hugging Face Trainer) or ``global_step<N>`` (DeepSpeed,
  GPT-NeoX library), or
- a single weight file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``, ``.ckpt``)
  whose name contains the step as ``step<N>``, ``step=<N>``, ``step_<N>``,
  ``step-<N>`` or ``checkpoint-<N>``, for example ``epoch=0-step=1000.ckpt``.

Steps are parsed as integers and sorted numerically, so ``checkpoint-1000``
comes after ``checkpoint-200``. A ``checkpoint-<N>`` folder whose
``trainer_state.json`` stores a ``global_step`` takes its step from there. Names
that look like checkpoints but whose step does not parse (``step-final``,
``last.ckpt``) are skipped with a logged message, never read as step 0.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainmap.checkpoints import trainer_state
from trainmap.checkpoints.layouts import has_weights, is_weight_file

logger = logging.getLogger(__name__)

STEP_FOLDER = re.compile(r"^step(\d+)$")
STEP_FOLDERS = (STEP_FOLDER, re.compile(r"^checkpoint-(\d+)$"), re.compile(r"^global_step(\d+)$"))
CHECKPOINT_PREFIXES = ("step", "checkpoint", "global_step")
# In a file name, "step" must not follow a letter, so "timestep100.pt" is no checkpoint.
STEP_IN_FILE_NAME = re.compile(r"(?:(?<![A-Za-z])step[=_-]?|^checkpoint[-_])(\d+)(?!\d)")
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint on disk: the run it belongs to, its step and its folder or file."""

    run: str
    step: int
    path: Path

    @property
    def complete(self) -> bool:
        """True when the checkpoint has a weight file or index (a killed save leaves none)."""
        return has_weights(self.path)


@dataclass
class Run:
    """A training run: a name, its folder and its checkpoints sorted by step."""

    name: str
    path: Path
    checkpoints: list[CheckpointRef] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        """Steps of all checkpoints, ascending."""
        return [checkpoint.step for checkpoint in self.checkpoints]

    @property
    def metrics_path(self) -> Path:
        """Path of the run's ``metrics.jsonl`` (it may not exist)."""
        return self.path / METRICS_FILE

    def loss_history(self) -> dict[str, dict[int, float]]:
        """Return the losses that Hugging Face Trainer checkpoints store.

        Reads ``log_history`` from every checkpoint's ``trainer_state.json`` and
        returns ``{"train_loss": {step: value}, "eval_loss": {step: value}}``, the
        shape of :func:`trainmap.features.losses.read_metrics`. Later checkpoints
        win where two disagree. Empty when no checkpoint has the file.
        """
        series: dict[str, dict[int, float]] = {"train_loss": {}, "eval_loss": {}}
        for checkpoint in self.checkpoints:
            state_path = checkpoint.path / trainer_state.TRAINER_STATE
            if not state_path.is_file():
                continue
            for key, values in trainer_state.read_losses(state_path).items():
                series[key].update(values)
        return series


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run folder.

    Parameters
    ----------
    path : str or Path
        Folder that contains checkpoint folders or step-numbered weight files.
    name : str, optional
        Run name; defaults to the folder name.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` contains no checkpoint.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    checkpoints = _checkpoints(path, name or path.name)
    if not checkpoints:
        raise ValueError(
            f"run folder {path} contains no checkpoints; point to the folder that contains "
            "step<N>/, checkpoint-<N>/ or global_step<N>/ folders, or weight files named "
            "with their step such as step1000.pt"
        )
    return Run(name or path.name, path, checkpoints)


def find_runs(root: str | Path) -> list[Run]:
    """Find every run under ``root``; ``root`` may itself be a run.

    Run names are paths relative to ``root`` (``seed3`` or ``lr0.1/seed3``), or
    the folder name when ``root`` is the run. Hidden folders are not searched.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    ValueError
        If no run is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    runs = []
    for folder, subfolders, _ in os.walk(root):
        folder_path = Path(folder)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        relative = folder_path.relative_to(root).as_posix()
        name = root.resolve().name if relative == "." else relative
        checkpoints = _checkpoints(folder_path, name)
        if checkpoints:
            runs.append(Run(name, folder_path, checkpoints))
            subfolders[:] = []  # a run's own sub-folders are its checkpoints
    if not runs:
        raise ValueError(
            f"no runs found under {root}: a run is a folder that contains checkpoint folders "
            "named step<N>, checkpoint-<N> or global_step<N> (for example "
            "runs/seed0/step100/model.safetensors), or weight files named with their step "
            "(runs/seed0/step100.pt)"
        )
    return sorted(runs, key=lambda run: run.name)


def parse_step(name: str, is_file: bool) -> int | None:
    """Return the step in a checkpoint folder or file name, or None when it has none."""
    if is_file:
        match = STEP_IN_FILE_NAME.search(Path(name).stem)
        return int(match.group(1)) if match else None
    for pattern in STEP_FOLDERS:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return None


def _checkpoints(folder: Path, run: str) -> list[CheckpointRef]:
    """Return the checkpoints directly inside ``folder``, by step; folders win ties."""
    by_step: dict[int, CheckpointRef] = {}
    for entry in sorted(folder.iterdir(), key=lambda entry: (not entry.is_dir(), entry.name)):
        if entry.name.startswith("."):
            continue
        step = _entry_step(entry)
        if step is None:
            continue
        if step in by_step:
            logger.warning("skipping %s: step %d is already read from %s", entry, step, by_step[step].path)
            continue
        by_step[step] = CheckpointRef(run, step, entry)
    return [by_step[step] for step in sorted(by_step)]


def _entry_step(entry: Path) -> int | None:
    """Return the step of a checkpoint folder or weight file, None for anything else."""
    if entry.is_dir():
        step = parse_step(entry.name, is_file=False)
        if step is None:
            if entry.name.startswith(CHECKPOINT_PREFIXES):
                logger.info("skipping %s: the step number in the folder name does not parse", entry)
            return None
        return _trainer_step(entry, step)
    if not is_weight_file(entry):
        return None
    step = parse_step(entry.name, is_file=True)
    if step is None:
        logger.info("skipping %s: no step number such as step1000 in the file name", entry)
    return step


def _trainer_step(folder: Path, named_step: int) -> int:
    """Return the ``global_step`` of a Trainer checkpoint, else the step in its name."""
    state_path = folder / trainer_state.TRAINER_STATE
    if not state_path.is_file():
        return named_step
    stored = trainer_state.read_global_step(state_path)
    if stored is None:
        return named_step
    if stored != named_step:
        logger.info("%s: trainer_state.json stores global_step %d; using it as the step", folder, stored)
    return stored
