"""The interface of tensor feature families and the checkpoint context they receive.

A family is a class constructed once per checkpoint with a
:class:`CheckpointContext`. Extraction then

1. calls ``visit(name, tensor, finite)`` for every tensor of the checkpoint, one
   tensor in memory at a time (float tensors arrive as float32);
2. calls ``revisit_names()``. While it returns names, extraction streams those
   tensors to ``revisit(name, tensor)`` and calls ``revisit_names()`` again.
   Each call starts a new pass, for families that need another look, such as
   an exact median;
3. calls ``finish()``, which returns ``{feature name: value}``.

After ``finish()``, ``skip_reason`` is None when the family computed its
features, or a sentence saying why it computed none (the model does not use
GPT-NeoX names, there is no step-0 checkpoint, ...). A family fills only the
features it can compute; the feature table leaves the rest empty (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from trainmap.checkpoints import CheckpointRef
from trainmap.features.spectra import SpectrumCache


@dataclass
class CheckpointContext:
    """The checkpoint being extracted and what families may use beside its tensors.

    Attributes
    ----------
    ref : CheckpointRef
        The checkpoint.
    config : dict
        Its ``config.json`` ({} if absent).
    previous : CheckpointRef or None
        The run's closest earlier checkpoint, for ``dynamics/``.
    initial : CheckpointRef or None
        The run's step-0 checkpoint, for ``dynamics/``. Both are at steps
        <= ``ref.step``, so features stay causal.
    spectra : SpectrumCache
        Singular values of the current tensor, shared by the families.
    """

    ref: CheckpointRef
    config: dict = field(default_factory=dict)
    previous: CheckpointRef | None = None
    initial: CheckpointRef | None = None
    spectra: SpectrumCache = field(default_factory=SpectrumCache)


class TensorFamily(Protocol):
    """The interface every tensor feature family implements."""

    name: str
    skip_reason: str | None

    def visit(self, name: str, tensor: torch.Tensor, finite: bool) -> None: ...

    def revisit_names(self) -> list[str]: ...

    def revisit(self, name: str, tensor: torch.Tensor) -> None: ...

    def finish(self) -> dict[str, float]: ...


class SinglePassFamily:
    """Base for families that need one look at each tensor."""

    name = ""

    def __init__(self, context: CheckpointContext):
        self.context = context
        self.skip_reason: str | None = None

    def revisit_names(self) -> list[str]:
        return []

    def revisit(self, name: str, tensor: torch.Tensor) -> None:
        raise RuntimeError(f"the {self.name}/ family asked for no second pass, yet got tensor {name}")
