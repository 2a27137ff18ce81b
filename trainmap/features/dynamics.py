"""Parameter movement since the previous checkpoint and since step 0 (family ``dynamics/``).

For a checkpoint at step t, its run's closest earlier checkpoint at step s and
the run's step-0 checkpoint, each group of parameters is treated as one long
vector: W_t, W_s and W_0. Features per group g:

- ``dynamics/{g}.update_rate``: ||W_t - W_s|| / ||W_s|| / (t - s), the relative
  update size per optimizer step;
- ``dynamics/{g}.cos_prev``: cosine similarity of W_t and W_s;
- ``dynamics/{g}.dist_init``: ||W_t - W_0|| / ||W_0||, the relative distance to
  initialisation;
- ``dynamics/{g}.cos_init``: cosine similarity of W_t and W_0.

Groups are the GPT-NeoX module types ``embed``, ``attn_qkv``, ``attn_out``,
``mlp_in``, ``mlp_out``, ``unembed`` (weights and biases), ``ln`` (every layer
norm) and ``all`` (every tensor named ``*.weight`` or ``*.bias``). For a model
without GPT-NeoX names only ``all`` is computed.

The earlier checkpoints are read tensor by tensor beside the current one, so at
most three tensors are in memory, and only steps <= t are read. Norms are
Euclidean; a tensor missing from an earlier checkpoint, or of another shape,
makes its group's features against that checkpoint NaN.
"""

from __future__ import annotations

import logging
import math

import torch

from trainmap.checkpoints import CheckpointError, CheckpointRef, open_checkpoint
from trainmap.features.family import CheckpointContext, SinglePassFamily
from trainmap.features.gpt_neox import NORMS, parse_parameter_name
from trainmap.features.reductions import square_sum64

logger = logging.getLogger(__name__)

FAMILY = "dynamics"
GROUPS = ("embed", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "unembed", "ln", "all")


class DynamicsFamily(SinglePassFamily):
    """Relative update size and cosine similarity against the previous and step-0 checkpoints."""

    name = FAMILY

    def __init__(self, context: CheckpointContext):
        super().__init__(context)
        ref = context.ref
        self._previous = _Reference(context.previous, ref) if context.previous is not None else None
        self._initial = None
        if context.initial is not None:
            self._initial = _Reference(None if context.initial.step == ref.step else context.initial, ref)

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None:
        if not tensor.is_floating_point() or not name.endswith((".weight", ".bias")):
            return
        groups = ["all"]
        parsed = parse_parameter_name(name)
        if parsed is not None:
            groups.append("ln" if parsed.module in NORMS else parsed.module)
        for reference in (self._previous, self._initial):
            if reference is not None:
                reference.add(name, tensor, groups)

    def finish(self) -> dict[str, float]:
        if self._previous is None and self._initial is None:
            self.skip_reason = "the run has no earlier checkpoint and no step-0 checkpoint"
            return {}
        result = {}
        elapsed = self.context.ref.step - self.context.previous.step if self._previous is not None else 0
        for group in GROUPS:
            if self._previous is not None and group in self._previous.sums:
                distance, cosine = self._previous.compare(group)
                result[f"{FAMILY}/{group}.update_rate"] = distance / elapsed
                result[f"{FAMILY}/{group}.cos_prev"] = cosine
            if self._initial is not None and group in self._initial.sums:
                distance, cosine = self._initial.compare(group)
                result[f"{FAMILY}/{group}.dist_init"] = distance
                result[f"{FAMILY}/{group}.cos_init"] = cosine
        return result


class _Reference:
    """Sums of squares against one earlier checkpoint, accumulated per group.

    ``ref`` None means the earlier checkpoint is the current one (step 0
    compared with itself).
    """

    def __init__(self, ref: CheckpointRef | None, current: CheckpointRef):
        self.ref = ref
        self.current = current
        self.reader = None
        self.failed = False
        # group -> [sum (W - R)^2, sum W^2, sum R^2]
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, tensor: torch.Tensor, groups: list[str]) -> None:
        earlier = tensor if self.ref is None else self._read(name, tensor.shape)
        if earlier is None:
            update = [math.nan, math.nan, math.nan]
        else:
            update = [square_sum64(tensor - earlier), square_sum64(tensor), square_sum64(earlier)]
        for group in groups:
            sums = self.sums.setdefault(group, [0.0, 0.0, 0.0])
            for index, value in enumerate(update):
                sums[index] += value

    def compare(self, group: str) -> tuple[float, float]:
        """Return ||W - R|| / ||R|| and the cosine similarity of W and R for one group."""
        difference_sq, current_sq, earlier_sq = self.sums[group]
        current_norm, earlier_norm = math.sqrt(current_sq), math.sqrt(earlier_sq)
        distance = math.sqrt(difference_sq) / earlier_norm if earlier_norm > 0 else math.nan
        if current_norm > 0 and earlier_norm > 0:
            # 1 - cos from the difference, accurate when W and R nearly coincide:
            # ||W - R||^2 = (||W|| - ||R||)^2 + 2 ||W|| ||R|| (1 - cos).
            one_minus_cosine = (difference_sq - (current_norm - earlier_norm) ** 2) / (2 * current_norm * earlier_norm)
            cosine = min(1.0, max(-1.0, 1.0 - one_minus_cosine))
        else:
            cosine = math.nan
        return distance, cosine

    def _read(self, name: str, shape: torch.Size) -> torch.Tensor | None:
        """Return tensor ``name`` of the earlier checkpoint, or None if absent or unusable."""
        from safetensors import SafetensorError

        if self.failed:
            return None
        try:
            if self.reader is None:
                self.reader = open_checkpoint(self.ref)
            if name not in self.reader.files and name not in self.reader.ties:
                return None
            _, tensor = next(iter(self.reader.tensors([name])))
        except (OSError, ValueError, RuntimeError, SafetensorError, CheckpointError) as error:
            logger.warning(
                "%s: cannot read %s for dynamics/ features, which become NaN: %s: %s",
                self.current.path, self.ref.path, type(error).__name__, error,
            )
            self.failed = True
            return None
        if tensor.shape != shape:
            logger.info("%s: %s has shape %s in %s; its groups' dynamics/ features are NaN",
                        self.current.path, name, tuple(tensor.shape), self.ref.path)
            return None
        return tensor
