"""Load torch checkpoint files without running code from them.

Every file is opened with ``torch.load(weights_only=True)``, which rebuilds only
tensors and plain containers, and with ``mmap=True`` when the file has the zip
format of ``torch.save`` (PyTorch >= 1.6), so tensor bytes stay on disk until a
tensor is used. A file that needs other Python globals, such as an
``argparse.Namespace`` saved by older Megatron or DeepSpeed code, raises
:class:`~trainmap.checkpoints.UnsafeCheckpointError` naming the file and the
globals. Full unpickling, which can run code from the file, happens only inside
:func:`trusted_pickles` or with ``trust_pickles=True``, and the reader then
records it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trainmap.checkpoints.errors import UnsafeCheckpointError

logger = logging.getLogger(__name__)

# Keys under which trainers nest the state dict: Lightning and most scripts use
# "state_dict", DeepSpeed "module", nanoGPT-style scripts "model".
WRAPPER_KEYS = ("state_dict", "module", "model")
# Prefixes that wrappers add to every key: a LightningModule attribute named
# ``model``, DistributedDataParallel or DeepSpeed (``module.``), torch.compile.
COMMON_PREFIXES = ("model.", "module.", "_orig_mod.")
STEP_KEYS = ("global_step", "global_steps", "step")

_TRUST_PICKLES: contextvars.ContextVar[bool] = contextvars.ContextVar("trainmap_trust_pickles", default=False)


@contextlib.contextmanager
def trusted_pickles(enabled: bool = True) -> Iterator[None]:
    """Allow full unpickling of torch files inside the ``with`` block.

    ``trainmap extract --trust-pickles`` and ``trainmap score --trust-pickles``
    use this. Only enable it for files from a source you trust: unpickling can run
    any code the file contains.
    """
    token = _TRUST_PICKLES.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST_PICKLES.reset(token)


def pickles_trusted() -> bool:
    """Return True inside a :func:`trusted_pickles` block."""
    return _TRUST_PICKLES.get()


@dataclass
class TorchFile:
    """The tensors of one torch file, after unwrapping trainer containers.

    Attributes
    ----------
    path : Path
    tensors : dict of str to torch.Tensor
        Tensor entries of the state dict, keys as stored (no prefix stripped).
        With ``mmap`` the data stays in the file until used.
    skipped : list of str
        Keys of the state dict whose values are not tensors.
    container : str
        Keys descended through to reach the state dict, joined by ``/``, e.g.
        ``"state_dict"`` for Lightning or ``"module"`` for DeepSpeed; "" for none.
    trusted : bool
        True when the file needed full unpickling.
    stored_step : int or None
        The step the trainer stored in the file (``global_step``,
        ``global_steps`` or ``step``), when there is one.
    buffer_names : list of str
        Buffer names DeepSpeed lists in ``buffer_names``.
    """

    path: Path
    tensors: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    container: str = ""
    trusted: bool = False
    stored_step: int | None = None
    buffer_names: list[str] = field(default_factory=list)


def load_torch_file(path: str | Path, trust_pickles: bool | None = None) -> TorchFile:
    """Load a torch file safely and return its state dict.

    Parameters
    ----------
    path : str or Path
    trust_pickles : bool, optional
        Allow full unpickling when the file needs Python globals. None uses the
        setting of :func:`trusted_pickles`.

    Raises
    ------
    UnsafeCheckpointError
        If the file needs Python globals and unpickling is not trusted.
    ValueError
        If the file is not a torch file or contains no tensors.
    """
    path = Path(path)
    trust = pickles_trusted() if trust_pickles is None else trust_pickles
    payload, trusted = _load(path, trust)
    state, container = unwrap_state_dict(payload, path)
    tensors, skipped = _split_tensors(state)
    if not tensors:
        raise ValueError(
            f"{path} contains no tensors under {container or 'its top level'} "
            f"(keys: {', '.join(map(str, list(state)[:8]))}); point trainmap at a file with model weights"
        )
    top = payload if isinstance(payload, Mapping) else {}
    buffer_names = top.get("buffer_names") if isinstance(top.get("buffer_names"), list) else []
    return TorchFile(path, tensors, skipped, container, trusted, _stored_step(top), [str(n) for n in buffer_names])


def unwrap_state_dict(payload: Any, path: Path) -> tuple[Mapping, str]:
    """Descend through ``state_dict``, ``module`` or ``model`` keys to the state dict.

    Returns the state dict and the keys descended through, joined by ``/``.
    """
    trail = []
    while isinstance(payload, Mapping):
        inner = next((key for key in WRAPPER_KEYS if isinstance(payload.get(key), Mapping)), None)
        if inner is None:
            break
        trail.append(inner)
        payload = payload[inner]
    if not isinstance(payload, Mapping):
        raise ValueError(
            f"{path} contains a {type(payload).__name__}, not a state dict; save the "
            "weights with torch.save(model.state_dict(), path)"
        )
    return payload, "/".join(trail)


def strip_common_prefix(names: list[str]) -> tuple[dict[str, str], str]:
    """Strip wrapper prefixes that every name has.

    ``model.``, ``module.`` and ``_orig_mod.`` are removed, outermost first, only
    while every name starts with the same one, so ``module._orig_mod.`` goes as a
    whole. A Hugging Face Llama state dict keeps its ``model.`` because
    ``lm_head.weight`` lacks it.

    Returns
    -------
    mapping : dict of str to str
        Stripped name to original name.
    prefix : str
        The removed prefix, "" when none.
    """
    prefix = ""
    stripped = list(names)
    while stripped:
        common = next((p for p in COMMON_PREFIXES if all(name.startswith(p) for name in stripped)), None)
        if common is None or any(name == common for name in stripped):
            break
        prefix += common
        stripped = [name[len(common):] for name in stripped]
    return dict(zip(stripped, names)), prefix


# ---------------------------------------------------------------- helpers


def _load(path: Path, trust: bool) -> tuple[Any, bool]:
    """Return the unpickled file and whether full unpickling was needed."""
    import torch

    mmap = zipfile.is_zipfile(path)
    if not mmap:
        logger.info("%s has the legacy torch.save format; loading it without mmap", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), False
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path, error)
        if not unsafe:
            raise ValueError(f"{path} is not a readable torch file: {_first_line(error)}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile) as error:
        # A truncated or corrupt file; the caller flags the checkpoint unreadable.
        raise ValueError(f"{path} is not a readable torch file: {_first_line(error)}") from None
    if not trust:
        raise UnsafeCheckpointError(
            f"{path} needs the Python global(s) {', '.join(unsafe)} to load, and unpickling "
            "them can run code from the file, so trainmap loads only tensors "
            "(torch.load weights_only=True). If you trust the file's source, rerun with "
            "--trust-pickles; otherwise re-save its state dict with safetensors.torch.save_file",
            path,
            unsafe,
        )
    logger.warning("%s: full unpickling allowed by --trust-pickles (needs %s)", path, ", ".join(unsafe))
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap), True


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """Return the globals that stop a ``weights_only`` load, or [] for other failures."""
    import torch

    if zipfile.is_zipfile(path):
        try:
            # Scans the pickle opcodes; nothing in the file is executed.
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as scan_error:  # noqa: BLE001 - any scan failure falls back to the message
            logger.debug("could not scan %s for globals: %s", path, scan_error)
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def _split_tensors(state: Mapping) -> tuple[dict[str, Any], list[str]]:
    import torch

    tensors, skipped = {}, []
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[str(key)] = value
        else:
            skipped.append(str(key))
    return tensors, skipped


def _stored_step(top: Mapping) -> int | None:
    for key in STEP_KEYS:
        value = top.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
