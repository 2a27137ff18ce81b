"""Run checkpoint extractions serially, in a process pool or on Ray, with a result cache.

Each checkpoint's tensor features depend only on its own files and, for
``dynamics/``, on the files of the two checkpoints it is compared with. So a
result is cached under a key made of the content digests of those files, their
steps, the selected families and :data:`FEATURE_VERSION`. A rerun then computes
only what changed: new checkpoints, or checkpoints whose files changed. Each
result is written to the cache as soon as it arrives, through a temporary file
renamed into place, so a killed extraction loses no finished checkpoint and a
rerun computes none twice.

Run-level integrity flags (gaps, duplicates, architecture changes) need the
checkpoints in step order, so the caller derives them afterwards from the
digests and parameter shapes every result carries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from trainmap.checkpoints import CheckpointRef

logger = logging.getLogger(__name__)

# Bump when any feature definition changes, so cached results are not reused.
FEATURE_VERSION = "1"
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One checkpoint to extract, with the checkpoints ``dynamics/`` compares it with."""

    ref: CheckpointRef
    families: tuple[str, ...]
    previous: CheckpointRef | None = None
    initial: CheckpointRef | None = None
    device: str = "cpu"
    # Travels with the job because worker processes do not share the caller's context.
    trust_pickles: bool = False


@dataclass
class CheckpointResult:
    """What extracting one checkpoint produced.

    Attributes
    ----------
    row : dict
        Features and per-checkpoint flags (``run`` and ``step`` included).
    skipped : dict of str to str
        Families that computed nothing, and why.
    digest : str or None
        Content digest of the checkpoint's weight files (None when unreadable).
    parameters : dict of str to list of int or None
        Parameter names and shapes, for the architecture-change flag.
    """

    row: dict
    skipped: dict = field(default_factory=dict)
    digest: str | None = None
    parameters: dict | None = None


def run_jobs(
    jobs: list[Job],
    compute: Callable[[Job], CheckpointResult],
    workers: int = 1,
    executor: str = "local",
    cache: "ResultCache | None" = None,
    progress: bool = True,
) -> tuple[dict[CheckpointRef, CheckpointResult], int]:
    """Compute every job, taking what the cache has; return results and the count computed.

    Parameters
    ----------
    jobs : list of Job
    compute : callable
        Module-level function (so processes and Ray can import it) that extracts one job.
    workers : int
        Parallel workers; 1 computes in this process.
    executor : {"local", "ray"}
        ``local`` uses a process pool of ``workers`` processes with one torch
        thread each; ``ray`` submits one task per checkpoint to the Ray cluster
        of ``ray.init()`` (a local one unless ``RAY_ADDRESS`` names another).
    cache : ResultCache, optional
        Where results are looked up and stored.
    """
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: dict[CheckpointRef, CheckpointResult] = {}
    keys: dict[CheckpointRef, str | None] = {}
    pending = []
    for job in jobs:
        key = cache.key(job) if cache is not None else None
        cached = cache.get(key) if key is not None else None
        if cached is not None:
            results[job.ref] = _relabel(cached, job.ref)
        else:
            keys[job.ref] = key
            pending.append(job)
    if results:
        logger.info("%d of %d checkpoints taken from the cache", len(results), len(jobs))

    bar = tqdm(total=len(jobs), initial=len(results), desc="extract", unit="ckpt",
               disable=not progress, dynamic_ncols=True)
    for job, result in _execute(pending, compute, workers, executor):
        results[job.ref] = result
        if cache is not None and keys.get(job.ref) is not None:
            cache.put(keys[job.ref], result)
        bar.update(1)
    bar.close()
    return results, len(pending)


def _execute(jobs: list[Job], compute, workers: int, executor: str) -> Iterator[tuple[Job, CheckpointResult]]:
    """Yield ``(job, result)`` as results arrive."""
    if not jobs:
        return
    if executor == "ray":
        yield from _execute_ray(jobs, compute)
    elif workers == 1:
        for job in jobs:
            yield job, compute(job)
    else:
        yield from _execute_pool(jobs, compute, workers)


def _execute_pool(jobs: list[Job], compute, workers: int) -> Iterator[tuple[Job, CheckpointResult]]:
    """Run jobs in a spawn-based process pool, one torch thread per process.

    One thread each, because several processes that each spin OpenMP threads on
    two cores slow one another down many times over.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(compute, job): job for job in jobs}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                yield futures[future], future.result()


def _init_worker() -> None:
    """Limit a pool worker to one torch thread with passive OpenMP waiting."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)


def _execute_ray(jobs: list[Job], compute) -> Iterator[tuple[Job, CheckpointResult]]:
    """Run one Ray task per job on the cluster of ``ray.init()``."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--executor ray needs Ray; install it with `pip install 'trainmap[ray]'`"
        ) from None
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    remote = ray.remote(num_cpus=1)(_ray_compute)
    refs = {remote.remote(compute, job): job for job in jobs}
    remaining = list(refs)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        for ref in done:
            yield refs[ref], ray.get(ref)


def _ray_compute(compute, job: Job) -> CheckpointResult:
    _init_worker()
    return compute(job)


def _relabel(result: CheckpointResult, ref: CheckpointRef) -> CheckpointResult:
    """Return a cached result with the run and step of ``ref`` (content may be shared)."""
    row = dict(result.row, run=ref.run, step=ref.step)
    return CheckpointResult(row, dict(result.skipped), result.digest, result.parameters)


class ResultCache:
    """Extraction results on disk, keyed by content digests and feature version.

    Layout: ``<folder>/rows/<key[:2]>/<key>.json`` holds one result;
    ``<folder>/digests/`` remembers each weight file's SHA-256 by path, size,
    inode and modification time, so an unchanged file is not hashed again.

    Parameters
    ----------
    folder : str or Path
        Cache folder; created on first write.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def key(self, job: Job) -> str | None:
        """Return the cache key of ``job``, or None when a checkpoint cannot be hashed."""
        try:
            parts = {
                "version": FEATURE_VERSION,
                "families": sorted(job.families),
                "checkpoint": self._digest(job.ref),
                "step": job.ref.step,
                "trust_pickles": job.trust_pickles,
            }
            if "dynamics" in job.families:
                for name, other in (("previous", job.previous), ("initial", job.initial)):
                    parts[name] = None if other is None else [self._digest(other), other.step]
        except (OSError, ValueError) as error:
            logger.info("not caching %s: %s", job.ref.path, error)
            return None
        text = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, key: str) -> CheckpointResult | None:
        """Return the stored result of ``key``, or None."""
        path = self._row_path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable cache entry %s: %s", path, error)
            return None
        return CheckpointResult(**data)

    def put(self, key: str, result: CheckpointResult) -> None:
        """Store ``result`` under ``key`` atomically."""
        _write_atomic(self._row_path(key), json.dumps(asdict(result), allow_nan=True))

    def __len__(self) -> int:
        rows = self.folder / "rows"
        return sum(1 for _ in rows.glob("*/*.json")) if rows.is_dir() else 0

    def _row_path(self, key: str) -> Path:
        return self.folder / "rows" / key[:2] / f"{key}.json"

    def _digest(self, ref: CheckpointRef) -> str:
        """Return the checkpoint digest of ``ref``, hashing only files not seen before."""
        from trainmap.checkpoints.integrity import checkpoint_digest, weight_file_hashes
        from trainmap.checkpoints.layouts import detect_layout

        return checkpoint_digest(weight_file_hashes(detect_layout(ref.path), self._file_hash))

    def _file_hash(self, path: Path) -> str:
        from trainmap.checkpoints.integrity import file_hash

        stat = path.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_ino}|{stat.st_mtime_ns}"
        index = self.folder / "digests" / f"{hashlib.sha256(identity.encode()).hexdigest()}.txt"
        try:
            return index.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = file_hash(path)
            _write_atomic(index, value)
            return value


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
