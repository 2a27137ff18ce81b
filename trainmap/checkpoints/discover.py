"""Discover runs and their step checkpoints in a folder tree.

A run is a folder that contains checkpoint folders named ``step<N>`` (the Pythia
revision names, also written by ``trainmap ensemble``). Steps are parsed as
integers and sorted numerically, so ``step1000`` comes after ``step200``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

STEP_FOLDER = re.compile(r"^step(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint on disk: the run it belongs to, its step and its folder."""

    run: str
    step: int
    path: Path

    @property
    def complete(self) -> bool:
        """True when the folder contains a weight file (a killed save leaves none)."""
        return any((self.path / name).is_file() for name in WEIGHT_FILES)


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


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run folder.

    Parameters
    ----------
    path : str or Path
        Folder that contains ``step<N>`` checkpoint folders.
    name : str, optional
        Run name; defaults to the folder name.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` contains no ``step<N>`` folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    checkpoints = _step_checkpoints(path, name or path.name)
    if not checkpoints:
        raise ValueError(
            f"run folder {path} contains no step<N> checkpoint folders; point to the "
            "folder that contains step0/, step1/, ..."
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
        checkpoints = _step_checkpoints(folder_path, name)
        if checkpoints:
            runs.append(Run(name, folder_path, checkpoints))
            subfolders[:] = []  # a run's own sub-folders are its checkpoints
    if not runs:
        raise ValueError(
            f"no runs found under {root}: a run is a folder that contains step<N> "
            "checkpoint folders (for example runs/seed0/step100/model.safetensors)"
        )
    return sorted(runs, key=lambda run: run.name)


def _step_checkpoints(folder: Path, run: str) -> list[CheckpointRef]:
    """Return the ``step<N>`` checkpoints directly inside ``folder``, by step."""
    checkpoints = []
    for entry in folder.iterdir():
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        match = STEP_FOLDER.match(entry.name)
        if match:
            checkpoints.append(CheckpointRef(run, int(match.group(1)), entry))
        elif entry.name.startswith("step"):
            logger.info("skipping %s: the step number after 'step' does not parse", entry)
    return sorted(checkpoints, key=lambda checkpoint: checkpoint.step)
