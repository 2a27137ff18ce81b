"""Mean, variance and exact lower median of values that arrive tensor by tensor.

The median needs all values, but only one tensor may be in memory at a time. The
first pass keeps every value while the pool is small (``KEEP_ALL_LIMIT``), and
every ``SAMPLE_STRIDE``-th value of the concatenated stream (a systematic
sample). It also guesses a bracket from the central ``SPECULATIVE_SHARE`` of the
first tensor, counts the values below it and keeps those inside it. When the
median's rank falls inside, the median is read off the sorted values inside and
no second pass is needed. Weights spread around a common centre make this the
usual case. Otherwise the sample brackets the median: a second pass counts and
keeps values against that bracket. If it misses too (the sample was
unrepresentative), the next pass widens it. The widest bracket is unbounded, so
the result is always exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainmap.features.reductions import square_sum64, sum64

KEEP_ALL_LIMIT = 1 << 20
SAMPLE_STRIDE = 257  # a prime, so the sample does not follow row lengths
# Bracket half-width in standard deviations of a sample quantile.
BRACKET_SIGMAS = 4.0
# Share of the first tensor's values, around its median, in the guessed bracket.
SPECULATIVE_SHARE = 0.04
# Values kept inside the guessed bracket before the guess is dropped (64 MB of
# float32), so memory stays bounded for large models.
SPECULATIVE_LIMIT = 1 << 24


class StreamingPool:
    """Count, mean, variance (Bessel-corrected) and lower median of a value stream.

    Call :meth:`add` for every tensor, then, while :meth:`start_pass` returns
    True, :meth:`collect` for every tensor again, then :meth:`median`.
    """

    def __init__(self):
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._samples: list[torch.Tensor] = []
        self._all_values: list[torch.Tensor] | None = []
        self._sorted_sample: torch.Tensor | None = None
        self._margin = 0
        self._bracket: tuple[float, float] | None = None
        self._below = 0
        self._inside: list[torch.Tensor] = []
        self._inside_count = 0
        self._guessing = True
        self._median: float | None = None

    def add(self, tensor: torch.Tensor, sum_of_squares: float | None = None) -> None:
        """Add one tensor's values; ``sum_of_squares`` saves a pass when known."""
        flat = tensor.detach().reshape(-1)
        count = flat.numel()
        if count == 0:
            return
        total = sum64(tensor)
        mean = total / count
        if sum_of_squares is None:
            sum_of_squares = square_sum64(tensor)
        m2 = sum_of_squares - total * mean
        if mean * mean * count > 0.25 * sum_of_squares or m2 < 0:
            # Subtracting nearly equal sums would lose digits: centre exactly.
            m2 = float(((flat.double() - mean) ** 2).sum())

        # Sample the values whose position in the whole stream is a multiple of the stride.
        first = (-self.count) % SAMPLE_STRIDE
        self._samples.append(flat[first::SAMPLE_STRIDE].float().clone())
        self._merge(count, mean, m2)
        if self._all_values is not None:
            self._all_values.append(flat.float().clone())
            if self.count > KEEP_ALL_LIMIT:
                self._all_values = None
        if self._guessing:
            self._guess(flat)

    def mean(self) -> float:
        return self._mean if self.count else math.nan

    def variance(self) -> float:
        return self._m2 / (self.count - 1) if self.count > 1 else math.nan

    def start_pass(self) -> bool:
        """Close the previous pass; return True if another pass over the values is needed."""
        if self._median is not None or self.count == 0:
            return False
        rank = (self.count - 1) // 2
        if self._all_values is not None:
            self._median = _kth(self._all_values, rank)
            return False
        if self._bracket is not None and self._resolve(rank):
            return False
        self._guessing = False
        self._next_bracket(rank)
        return True

    def collect(self, tensor: torch.Tensor) -> None:
        """Count and keep one tensor's values against the current bracket."""
        low, high = self._bracket
        # numpy's comparisons run about three times faster than torch's here.
        values = tensor.detach().reshape(-1).float().numpy()
        if low == high:
            # A bracket of one value (many ties): count, there is nothing to sort.
            self._below += int(np.count_nonzero(values < low))
            self._inside_count += int(np.count_nonzero(values == low))
            return
        self._below += int(np.count_nonzero(values < low))
        inside = values[(values >= low) & (values <= high)]
        if inside.size:
            self._inside.append(torch.from_numpy(inside))
            self._inside_count += inside.size

    def median(self) -> float:
        """Return the lower median: the value of rank ``(count - 1) // 2``."""
        if self.count == 0:
            return math.nan
        if self._median is None:
            raise RuntimeError("median() needs the extra passes: call start_pass() until it returns False")
        return self._median

    def _merge(self, count: int, mean: float, m2: float) -> None:
        """Combine with another set's statistics (Chan et al.'s parallel update)."""
        total = self.count + count
        delta = mean - self._mean
        self._mean += delta * count / total
        self._m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def _guess(self, flat: torch.Tensor) -> None:
        """Count one tensor against the guessed bracket, set from the first tensor."""
        if self._bracket is None:
            values = flat.float()
            sample = values if values.numel() <= 1 << 16 else values[::SAMPLE_STRIDE]
            ordered = torch.sort(sample).values
            last = ordered.numel() - 1
            low_index = int(last * (0.5 - SPECULATIVE_SHARE / 2))
            high_index = int(math.ceil(last * (0.5 + SPECULATIVE_SHARE / 2)))
            self._bracket = (float(ordered[low_index]), float(ordered[high_index]))
        self.collect(flat)
        if self._inside_count > SPECULATIVE_LIMIT:
            self._guessing = False
            self._bracket = None
            self._below = 0
            self._inside = []
            self._inside_count = 0

    def _next_bracket(self, rank: int) -> None:
        """Choose a bracket around the median from the sample, wider each pass."""
        if self._sorted_sample is None:
            self._sorted_sample = torch.sort(torch.cat(self._samples)).values
            self._samples = []
            size = self._sorted_sample.numel()
            self._margin = int(BRACKET_SIGMAS * 0.5 * math.sqrt(size)) + 8
        else:
            self._margin *= 8
        sample = self._sorted_sample
        size = sample.numel()
        center = min(size - 1, rank * size // self.count)
        low_index = center - self._margin
        high_index = center + self._margin
        low = -math.inf if low_index < 0 else float(sample[low_index])
        high = math.inf if high_index >= size else float(sample[high_index])
        self._bracket = (low, high)
        self._below = 0
        self._inside = []
        self._inside_count = 0

    def _resolve(self, rank: int) -> bool:
        """Set the median if the last bracket contains its rank."""
        if not self._below <= rank < self._below + self._inside_count:
            return False
        low, high = self._bracket
        self._median = low if low == high else _kth(self._inside, rank - self._below)
        self._inside = []
        return True


def _kth(chunks: list[torch.Tensor], index: int) -> float:
    """Return the value of rank ``index`` (0-based) among the values of ``chunks``."""
    values = torch.cat(chunks).numpy()
    return float(np.partition(values, index)[index])
