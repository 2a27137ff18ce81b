"""Content hashes of weight files and the integrity flags of a run's checkpoints.

Each weight file is hashed with SHA-256 (``hashlib``, about 1 GB/s on CPUs with
SHA extensions). For a file stored with Git LFS, such as a Hugging Face Hub
weight file, this is the LFS object id, so a hash can be checked against the
Hub's listing. A checkpoint's digest is the SHA-256 of its files' hashes, so two
byte-identical checkpoints share a digest whatever their folder is called.

Run-level flags, written into the feature table's ``flag/*`` columns:

- ``flag/duplicate_of``: another step of the run with the same digest (the
  earliest such step), -1 when there is none;
- ``flag/same_as_final``: the checkpoint is byte-identical to the run's final
  checkpoint but is not the final checkpoint;
- ``flag/gap_before``: steps of the run's regular schedule that are missing just
  before this step;
- ``flag/architecture_change``: parameters added, removed or reshaped since the
  previous checkpoint ("" when none). Buffers are not parameters, so a key set
  that differs only by buffers is no change.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

from trainmap.checkpoints.errors import CheckpointError

logger = logging.getLogger(__name__)

HASH_NAME = "sha256"
RUN_FLAGS = {
    "flag/duplicate_of": -1,
    "flag/same_as_final": False,
    "flag/gap_before": 0,
    "flag/architecture_change": "",
}
_CHUNK = 1 << 20
_MAX_CHANGE_NAMES = 5
_hash_cache: dict[tuple, str] = {}


def file_hash(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file, reading it in 1 MiB chunks.

    Results are cached per process by path, size, inode and modification time,
    so a file is read once even when several steps ask for it.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns)
    cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.new(HASH_NAME)
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    _hash_cache[key] = value
    return value


def checkpoint_digest(file_hashes: dict[str, str]) -> str:
    """Return the SHA-256 of ``name:hash`` lines, one per weight file, sorted by name."""
    lines = "\n".join(f"{name}:{value}" for name, value in sorted(file_hashes.items()))
    return hashlib.new(HASH_NAME, lines.encode("utf-8")).hexdigest()


def find_gaps(steps: list[int]) -> list[int]:
    """Return the steps missing from an otherwise regular checkpoint schedule.

    A regular schedule is 0 and powers of two, evenly spaced steps, or powers of
    two followed by evenly spaced steps, as in Pythia (0, 1, 2, 4, ..., 512, 1000,
    2000, ...). The spacing is the most common difference between consecutive
    steps, the larger one on a tie. When the holes would outnumber half the
    evenly spaced checkpoints, the schedule counts as irregular and no gaps are
    reported, because there is nothing regular to compare against.
    """
    steps = sorted(set(steps))
    if len(steps) < 3:
        return []
    if all(_is_power_of_two(step) or step == 0 for step in steps):
        return sorted(_powers_of_two(steps[0], steps[-1]) - set(steps))

    counts = Counter(b - a for a, b in zip(steps, steps[1:]))
    stride = max(counts, key=lambda difference: (counts[difference], difference))
    tail_start = len(steps)
    while tail_start > 0 and steps[tail_start - 1] % stride == 0:
        tail_start -= 1
    head, tail = steps[:tail_start], steps[tail_start:]
    if len(tail) < 2 or not all(step == 0 or _is_power_of_two(step) for step in head):
        return []

    first_linear = (head[-1] // stride + 1) * stride if head else tail[0]
    expected = set(range(first_linear, tail[-1] + 1, stride))
    if head:
        expected |= _powers_of_two(head[0], head[-1])
    missing = sorted(expected - set(steps))
    if len(missing) > len(tail) // 2:
        return []
    return missing


class RunIntegrity:
    """Collect the run-level integrity flags of one run's checkpoints.

    Call :meth:`observe` for each checkpoint in step order, then :meth:`run_flags`
    for the flags that need the whole run (duplicates, same as final).

    Parameters
    ----------
    run : Run
        The run; all of its discovered steps define the schedule.
    """

    def __init__(self, run):
        self.run = run
        self.gaps = find_gaps(run.steps)
        self._digests: dict[int, str] = {}
        self._previous: dict[str, tuple[int, ...]] | None = None

    def observe(self, step: int, digest: str, parameters: dict[str, tuple[int, ...]]) -> dict:
        """Record one readable checkpoint; return its gap and architecture flags.

        Parameters
        ----------
        step : int
        digest : str
            :func:`checkpoint_digest` of its weight files.
        parameters : dict of str to tuple of int
            Parameter names (tied names included, buffers excluded) and shapes.
        """
        self._digests[step] = digest
        change = "" if self._previous is None else describe_change(self._previous, parameters)
        self._previous = parameters
        return {"flag/gap_before": self.gap_before(step), "flag/architecture_change": change}

    def gap_before(self, step: int) -> int:
        """Return the number of scheduled steps missing just before ``step``."""
        earlier = [s for s in self.run.steps if s < step]
        previous = earlier[-1] if earlier else -1
        return sum(1 for gap in self.gaps if previous < gap < step)

    def run_flags(self) -> dict[int, dict]:
        """Return ``{step: {"flag/duplicate_of": ..., "flag/same_as_final": ...}}``.

        The final checkpoint is the last complete one of the run. When it was not
        observed (extraction stopped at a horizon), its files are hashed here.
        """
        final_step, final_digest = self._final_digest()
        first_by_digest: dict[str, list[int]] = {}
        for step in sorted(self._digests):
            first_by_digest.setdefault(self._digests[step], []).append(step)
        flags = {}
        for step, digest in self._digests.items():
            others = [s for s in first_by_digest[digest] if s != step]
            flags[step] = {
                "flag/duplicate_of": others[0] if others else -1,
                "flag/same_as_final": final_digest is not None and digest == final_digest and step != final_step,
            }
        return flags

    def _final_digest(self) -> tuple[int | None, str | None]:
        from trainmap.checkpoints.layouts import detect_layout

        complete = [ref for ref in self.run.checkpoints if ref.complete]
        if not complete:
            return None, None
        final = complete[-1]
        if final.step in self._digests:
            return final.step, self._digests[final.step]
        try:
            layout = detect_layout(final.path)
        except (OSError, ValueError, CheckpointError) as error:
            # A damaged final checkpoint only loses this flag; its own row reports it.
            logger.info("cannot hash the final checkpoint %s: %s", final.path, error)
            return final.step, None
        return final.step, checkpoint_digest(weight_file_hashes(layout))


def weight_file_hashes(layout, hasher=None) -> dict[str, str]:
    """Return ``{file name relative to the checkpoint: SHA-256}`` for a layout.

    A single-file checkpoint's file is named "" so that two byte-identical files
    of different names share a digest. ``hasher`` replaces :func:`file_hash`
    (the extraction cache passes one that remembers hashes across processes).
    """
    hasher = hasher or file_hash
    base = layout.path if layout.path.is_dir() else None
    hashes = {}
    for path in layout.files:
        name = path.relative_to(base).as_posix() if base is not None else ""
        hashes[name] = hasher(path)
    return hashes


def describe_change(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]) -> str:
    """Describe parameters added, removed or reshaped between two checkpoints; "" if none."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    reshaped = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    parts = []
    for label, names in (("added", added), ("removed", removed), ("reshaped", reshaped)):
        if names:
            shown = ", ".join(names[:_MAX_CHANGE_NAMES])
            more = f" and {len(names) - _MAX_CHANGE_NAMES} more" if len(names) > _MAX_CHANGE_NAMES else ""
            parts.append(f"{label} {shown}{more}")
    return "; ".join(parts)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _powers_of_two(low: int, high: int) -> set[int]:
    """Return the powers of two in ``[max(low, 1), high]``."""
    powers, power = set(), 1
    while power <= high:
        if power >= low:
            powers.add(power)
        power *= 2
    return powers
