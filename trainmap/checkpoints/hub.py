"""Pull Pythia and PolyPythias checkpoints from the Hugging Face Hub.

Each checkpoint is a revision of a Hub repository: ``EleutherAI/pythia-410m`` is
seed 0 and ``EleutherAI/pythia-410m-seed3`` is PolyPythias seed 3, both with
branches ``step0``, ``step1``, ... ``step143000``. Only weight files and
``config.json`` are downloaded, into the Hugging Face cache (``HF_HUB_CACHE`` or
``--cache-dir``), and linked into a run folder that ``trainmap extract`` reads::

    OUT_DIR/pythia-410m-seed3/step1000/model.safetensors -> <cache>/.../blobs/<sha256>

Offline (``HF_HUB_OFFLINE=1`` or ``offline=True``) the same code reads what the
cache already contains and never opens a connection.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainmap.steps import parse_steps as parse_step_list

logger = logging.getLogger(__name__)

ORGANISATION = "EleutherAI"
SIZE_PATTERN = re.compile(r"^\d+(\.\d+)?[mb](-deduped)?$")
CONFIG_FILE = "config.json"
SAFETENSORS_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json")
BIN_PATTERNS = ("pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")


class HubUnavailableError(FileNotFoundError):
    """A checkpoint is not in the local cache and the Hub cannot be reached."""


@dataclass(frozen=True)
class PulledCheckpoint:
    """One checkpoint linked into a run folder.

    Attributes
    ----------
    repo_id : str
    revision : str
    snapshot : Path
        The cache folder of that revision.
    path : Path
        The ``step<N>`` folder in the run folder.
    """

    repo_id: str
    revision: str
    snapshot: Path
    path: Path


def pythia_repo(size: str, seed: int) -> str:
    """Return the Hub repository of a Pythia size and seed; seed 0 is the original Pythia.

    Raises
    ------
    ValueError
        If ``size`` is not like ``410m``, ``1.4b`` or ``160m-deduped``, or ``seed`` is negative.
    """
    size = size.lower()
    if not SIZE_PATTERN.match(size):
        raise ValueError(f"invalid Pythia size {size!r}; use a size such as 14m, 160m, 410m, 1.4b or 410m-deduped")
    if seed < 0:
        raise ValueError(f"invalid seed {seed}; PolyPythias seeds are 0 (the original run) to 9")
    return f"{ORGANISATION}/pythia-{size}" if seed == 0 else f"{ORGANISATION}/pythia-{size}-seed{seed}"


def run_name(size: str, seed: int) -> str:
    """Return the run folder name, ``pythia-<size>-seed<k>`` (seed 0 included)."""
    return f"pythia-{size.lower()}-seed{seed}"


def weight_patterns(repo_files: list[str] | None) -> list[str]:
    """Return the file patterns to download: one weight format plus ``config.json``.

    Safetensors win when a revision has them. With ``repo_files`` None (offline,
    where the file list is unknown) both formats are allowed, and only what the
    cache contains is used.
    """
    if repo_files is None:
        return [*SAFETENSORS_PATTERNS, *BIN_PATTERNS, CONFIG_FILE]
    has_safetensors = any(name.endswith(".safetensors") for name in repo_files)
    return [*(SAFETENSORS_PATTERNS if has_safetensors else BIN_PATTERNS), CONFIG_FILE]


def pull_pythia(
    size: str,
    seeds: list[int],
    steps: list[int],
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> list[PulledCheckpoint]:
    """Download Pythia checkpoints and link them into ``out_dir/<run>/step<N>``.

    Parameters
    ----------
    size : str
        Model size, e.g. ``"410m"``.
    seeds : list of int
        Seeds; 0 is ``EleutherAI/pythia-<size>``, k > 0 ``EleutherAI/pythia-<size>-seed<k>``.
    steps : list of int
        Training steps; each is the Hub revision ``step<N>``.
    out_dir : str or Path
        Folder that receives one run folder per seed.
    cache_dir : str or Path, optional
        Hugging Face cache; defaults to ``HF_HUB_CACHE``.
    offline : bool, optional
        Read only the cache. None follows ``HF_HUB_OFFLINE``.

    Raises
    ------
    HubUnavailableError
        If a checkpoint is not cached and the Hub cannot be reached.
    ValueError
        If a revision or repository does not exist on the Hub.
    """
    if offline is None:
        offline = _env_offline()
    pulled = []
    for seed in seeds:
        repo_id = pythia_repo(size, seed)
        for step in steps:
            revision = f"step{step}"
            snapshot = _snapshot(repo_id, revision, cache_dir, offline)
            target = Path(out_dir) / run_name(size, seed) / revision
            _link_snapshot(snapshot, target)
            logger.info("linked %s@%s into %s", repo_id, revision, target)
            pulled.append(PulledCheckpoint(repo_id, revision, snapshot, target))
    return pulled


def parse_steps(text: str) -> list[int]:
    """Parse steps such as ``"0,1,2,4,1000:5000:1000"`` (``start:stop:stride``, stop included)."""
    steps = parse_step_list(text)
    if not steps or min(steps) < 0:
        raise ValueError(f"invalid steps {text!r}: give at least one step, all >= 0")
    return steps


# ---------------------------------------------------------------- helpers


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _snapshot(repo_id: str, revision: str, cache_dir, offline: bool) -> Path:
    """Return the cache folder of one revision, downloading it when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = weight_patterns(None if offline else _list_files(repo_id, revision))
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=offline,
        )
    except (LocalEntryNotFoundError, IncompleteSnapshotError) as error:
        raise HubUnavailableError(_unavailable_message(repo_id, revision, cache_dir, offline)) from error
    except RevisionNotFoundError:
        raise ValueError(
            f"{repo_id} has no revision {revision}; Pythia branches are step0, step1, step2, "
            "step4, ..., step512, then every 1000 steps to step143000"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"repository {repo_id} does not exist on the Hub; PolyPythias seeds 1-9 exist for "
            "sizes 14m, 31m, 70m, 160m and 410m"
        ) from None
    return Path(folder)


def _list_files(repo_id: str, revision: str) -> list[str] | None:
    """Return the files of a revision, or None when the Hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return HfApi().list_repo_files(repo_id, revision=revision)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as error:
        # snapshot_download below reports the problem with the cache in mind.
        logger.info("cannot list %s@%s: %s", repo_id, revision, error)
        return None


def _unavailable_message(repo_id: str, revision: str, cache_dir, offline: bool) -> str:
    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    reason = ("offline mode is on (HF_HUB_OFFLINE=1 or --offline)" if offline
              else "the Hugging Face Hub cannot be reached")
    return (
        f"{repo_id} at revision {revision} is not in the Hugging Face cache {cache}, and {reason}. "
        f"On a machine with network access run `trainmap pull OUT_DIR --size ... --seeds ... "
        f"--steps ... --cache-dir CACHE` and copy CACHE here, then pass --cache-dir CACHE "
        "(or set HF_HUB_CACHE); or run it here once the network is available"
    )


def _link_snapshot(snapshot: Path, target: Path) -> None:
    """Symlink every file of a snapshot into ``target``, replacing older links."""
    files = [path for path in snapshot.rglob("*") if path.is_file()]
    if not any(path.name != CONFIG_FILE for path in files):
        raise HubUnavailableError(
            f"cached snapshot {snapshot} has no weight file; pull that step again with network access"
        )
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        link = target / path.relative_to(snapshot)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        # Link to the blob itself, so the run folder stays valid if the snapshot's
        # own relative links are moved with a copied cache.
        link.symlink_to(path.resolve())
