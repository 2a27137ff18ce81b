"""Read checkpoint tensors lazily, one tensor at a time, in every supported layout.

Safetensors files are opened with ``safe_open``: the format is raw tensors and a
JSON header, so reading it never executes code from the file. Torch files go
through :mod:`trainmap.checkpoints.torchfiles` (``weights_only=True``, ``mmap``).
Opening a checkpoint reads only names, dtypes and shapes. :meth:`CheckpointReader.tensors`
then loads one tensor at a time, so peak memory follows the largest tensor (plus,
for torch files, the pages of one memory-mapped file).

While indexing, the reader

- strips a wrapper prefix (``model.``, ``module.``, ``_orig_mod.``) that every
  key has and records it;
- sets aside non-parameter buffers: non-floating dtypes, causal masks
  (``attention.bias``, ``attn.bias``), ``masked_bias`` and rotary ``inv_freq``;
- counts tied tensors once: keys that share storage in a torch file, and an
  output layer that ``config.json`` declares tied (``tie_word_embeddings``) and
  the file omits, which is then read from its partner;
- rejects ZeRO-3 placeholders, parameters stored as empty tensors.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from trainmap.checkpoints.discover import CheckpointRef
from trainmap.checkpoints.errors import CheckpointError
from trainmap.checkpoints.integrity import checkpoint_digest, weight_file_hashes
from trainmap.checkpoints.layouts import Layout, detect_layout
from trainmap.checkpoints.torchfiles import load_torch_file, pickles_trusted, strip_common_prefix

logger = logging.getLogger(__name__)

BUFFER_SUFFIXES = ("attention.bias", "attn.bias", "masked_bias", "inv_freq", "original_inv_freq")
TIED_INPUT_SUFFIXES = ("embed_in.weight", "embed_tokens.weight", "wte.weight", "word_embeddings.weight")
TIED_OUTPUT_NAMES = ("embed_out.weight", "lm_head.weight")
READER_FLAGS = {
    "flag/layout": "",
    "flag/dtype": "",
    "flag/prefix": "",
    "flag/buffers": 0,
    "flag/tied": "",
    "flag/trusted_pickle": False,
    "flag/nonfinite_tensors": "",
    "flag/digest": "",
}
_NONFINITE_SLICE = 1 << 22
_TORCH_DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


@dataclass
class _Entry:
    """Location of one tensor: its file, its key in that file, dtype code and shape."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    storage: tuple | None = None  # identifies shared storage in torch files


@dataclass
class CheckpointReader:
    """Tensor names of one checkpoint and a way to load each tensor on its own.

    Attributes
    ----------
    ref : CheckpointRef
        The checkpoint being read.
    files : dict of str to Path
        File holding each parameter tensor.
    dtypes : dict of str to str
        Stored dtype of each parameter tensor as a safetensors code, e.g. ``"BF16"``.
    shapes : dict of str to tuple of int
        Shape of each parameter tensor.
    layout : str
        Layout name, see :mod:`trainmap.checkpoints.layouts`.
    prefix : str
        Wrapper prefix removed from every key ("" for none).
    buffers : list of str
        Non-parameter tensors that were skipped, by stored name.
    ties : dict of str to str
        Tied name to the parameter it shares data with. Tied names are not in
        :meth:`names`, but :meth:`tensors` returns them on request.
    trusted_pickle : bool
        True when a file needed full unpickling (``--trust-pickles``).
    nonfinite : dict of str to int
        Non-finite values per tensor, filled in as :meth:`tensors` reads them.
    stored_step : int or None
        Step stored inside a torch file (Lightning, DeepSpeed), when present.
    """

    ref: CheckpointRef
    files: dict[str, Path] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layout: str = ""
    prefix: str = ""
    buffers: list[str] = field(default_factory=list)
    ties: dict[str, str] = field(default_factory=dict)
    trusted_pickle: bool = False
    nonfinite: dict[str, int] = field(default_factory=dict)
    stored_step: int | None = None
    _keys: dict[str, str] = field(default_factory=dict, repr=False)
    _layout: Layout | None = field(default=None, repr=False)
    _trust: bool = field(default=False, repr=False)
    _file_hashes: dict[str, str] | None = field(default=None, repr=False)
    _hashing: Future | None = field(default=None, repr=False)

    def start_hashing(self) -> None:
        """Hash the weight files on a background thread while the tensors are read.

        hashlib releases the GIL on large buffers, so the hash overlaps the
        feature computation instead of adding to it; :attr:`file_hashes` waits
        for the result.
        """
        if self._file_hashes is None and self._hashing is None:
            self._hashing = _hash_executor().submit(weight_file_hashes, self._layout)

    def names(self) -> list[str]:
        """Return the parameter names, sorted; buffers and tied names are left out."""
        return sorted(self.files)

    def parameters(self) -> dict[str, tuple[int, ...]]:
        """Return every parameter name, tied names included, with its shape."""
        shapes = dict(self.shapes)
        shapes.update({alias: self.shapes[partner] for alias, partner in self.ties.items()})
        return shapes

    def tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, "torch.Tensor"]]:
        """Yield ``(name, tensor)`` pairs, one tensor in memory at a time.

        Floating-point tensors are upcast to float32; other dtypes are returned as
        stored. Tensors are grouped by file, files in the order their first
        tensor is requested; a torch file is loaded once per group. A tied name
        yields its partner's data.

        Raises
        ------
        KeyError
            If a name is neither a parameter nor a tied name of this checkpoint.
        """
        wanted = self.names() if names is None else list(names)
        unknown = [name for name in wanted if self.ties.get(name, name) not in self.files]
        if unknown:
            raise KeyError(f"checkpoint {self.ref.path} has no parameter {', '.join(unknown[:5])}")
        by_file: dict[Path, list[str]] = {}
        for name in wanted:
            by_file.setdefault(self.files[self.ties.get(name, name)], []).append(name)
        for path, file_names in by_file.items():
            for name, tensor in self._read_file(path, file_names):
                yield name, self._prepare(name, tensor)

    @property
    def file_hashes(self) -> dict[str, str]:
        """SHA-256 of each weight file, by path relative to the checkpoint ("" for a single file)."""
        if self._file_hashes is None:
            if self._hashing is not None:
                self._file_hashes = self._hashing.result()
                self._hashing = None
            else:
                self._file_hashes = weight_file_hashes(self._layout)
        return self._file_hashes

    @property
    def digest(self) -> str:
        """SHA-256 over :attr:`file_hashes`; byte-identical checkpoints share it."""
        return checkpoint_digest(self.file_hashes)

    def flags(self) -> dict:
        """Return this checkpoint's ``flag/*`` values (see ``READER_FLAGS``).

        Hashes the weight files on first use. ``flag/nonfinite_tensors`` covers
        the tensors read so far.
        """
        parameter_dtypes = sorted(set(self.dtypes.values()))
        return {
            "flag/layout": self.layout,
            "flag/dtype": ",".join(parameter_dtypes),
            "flag/prefix": self.prefix,
            "flag/buffers": len(self.buffers),
            "flag/tied": ";".join(f"{alias}={partner}" for alias, partner in sorted(self.ties.items())),
            "flag/trusted_pickle": self.trusted_pickle,
            "flag/nonfinite_tensors": ";".join(f"{name}={count}" for name, count in sorted(self.nonfinite.items())),
            "flag/digest": self.digest,
        }

    def _read_file(self, path: Path, names: list[str]) -> Iterator[tuple[str, "torch.Tensor"]]:
        if self._layout.is_torch:
            loaded = load_torch_file(path, self._trust)
            for name in names:
                yield name, loaded.tensors[self._keys[self.ties.get(name, name)]]
            return
        from safetensors import safe_open

        for name in names:
            # One handle per tensor: safe_open maps the whole file, and pages read
            # through an open handle stay in this process's RSS until it closes.
            with safe_open(path, framework="pt") as handle:
                tensor = handle.get_tensor(self._keys[self.ties.get(name, name)])
            yield name, tensor

    def _prepare(self, name: str, tensor: "torch.Tensor") -> "torch.Tensor":
        """Upcast a floating tensor to float32 and count its non-finite values."""
        if not tensor.is_floating_point():
            return tensor
        tensor = tensor.float()
        bad = _count_nonfinite(tensor)
        if bad:
            self.nonfinite[name] = bad
        return tensor


_hasher: ThreadPoolExecutor | None = None


def _hash_executor() -> ThreadPoolExecutor:
    """Return the process-wide thread that hashes weight files in the background."""
    global _hasher
    if _hasher is None:
        _hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmap-hash")
    return _hasher


def _count_nonfinite(tensor: "torch.Tensor") -> int:
    """Count NaN and infinite values in slices of 4M elements.

    ``torch.isfinite`` on a whole tensor allocates temporaries about 2.3 times
    its size, which for an embedding matrix would double the reader's peak memory.
    """
    import torch

    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return 0
    # A NaN or infinity anywhere shows in the minimum or maximum; checking those two
    # numbers first (one pass, no temporaries) skips the count for finite tensors.
    low, high = torch.aminmax(flat)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return 0
    bad = 0
    for start in range(0, flat.numel(), _NONFINITE_SLICE):
        piece = flat[start:start + _NONFINITE_SLICE]
        bad += piece.numel() - int(torch.isfinite(piece).sum())
    return bad


def open_checkpoint(ref: CheckpointRef, trust_pickles: bool | None = None) -> CheckpointReader:
    """Index the tensors of a checkpoint without loading them.

    Parameters
    ----------
    ref : CheckpointRef
        A checkpoint folder or single weight file.
    trust_pickles : bool, optional
        Allow full unpickling of torch files that need Python globals. None
        uses :func:`~trainmap.checkpoints.trusted_pickles`.

    Raises
    ------
    FileNotFoundError
        If the checkpoint has no weight file (an interrupted save).
    CheckpointError
        If an index lists shard files missing on disk, GPT-NeoX block files are
        missing, or parameters are empty ZeRO-3 placeholders.
    UnsafeCheckpointError
        If a torch file needs Python globals and unpickling is not trusted.
    UnsupportedLayoutError
        If the weights are split over tensor-parallel ranks.
    """
    layout = detect_layout(ref.path)
    trust = pickles_trusted() if trust_pickles is None else trust_pickles
    reader = CheckpointReader(ref, layout=layout.kind, _layout=layout, _trust=trust)
    entries, buffer_names = _index_torch(layout, reader) if layout.is_torch else (_index_safetensors(layout), set())
    _assign_names(reader, entries, buffer_names)
    _tie_missing_outputs(reader)
    _reject_empty_parameters(reader)
    if reader.stored_step is not None and reader.stored_step != ref.step:
        logger.info("checkpoint %s stores step %d but is named step %d; using %d",
                    ref.path, reader.stored_step, ref.step, ref.step)
    return reader


# ---------------------------------------------------------------- indexing


def _index_safetensors(layout: Layout) -> dict[str, _Entry]:
    from safetensors import safe_open

    entries = {}
    for path in layout.files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                entries[key] = _Entry(path, key, tensor_slice.get_dtype(), tuple(tensor_slice.get_shape()))
    return entries


def _index_torch(layout: Layout, reader: CheckpointReader) -> tuple[dict[str, _Entry], set[str]]:
    """Index torch files; GPT-NeoX layer keys are renamed to Hugging Face names."""
    raw: dict[Path, dict[str, _Entry]] = {}
    buffer_names: set[str] = set()
    for path in layout.files:
        loaded = load_torch_file(path, reader._trust)
        reader.trusted_pickle |= loaded.trusted
        reader.stored_step = reader.stored_step if loaded.stored_step is None else loaded.stored_step
        buffer_names.update(loaded.buffer_names)
        if loaded.skipped:
            logger.debug("%s: ignoring entries that are not tensors: %s", path, ", ".join(loaded.skipped))
        raw[path] = {key: _torch_entry(path, key, tensor) for key, tensor in loaded.tensors.items()}
        del loaded
    if layout.kind != "neox-layers":
        return {key: entry for entries in raw.values() for key, entry in entries.items()}, buffer_names

    from trainmap.checkpoints.neox import map_layer_keys

    mapping = map_layer_keys({path: list(entries) for path, entries in raw.items()}, layout.path)
    renamed = {mapping[path][key]: entry for path, entries in raw.items() for key, entry in entries.items()}
    return renamed, buffer_names


def _torch_entry(path: Path, key: str, tensor) -> _Entry:
    storage = None
    if tensor.numel():
        # Addresses are compared within one file only: a later file's mapping can
        # reuse the address range of an earlier file that was already closed.
        storage = (path, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                   tuple(tensor.stride()), tensor.dtype)
    return _Entry(path, key, _dtype_code(tensor.dtype), tuple(tensor.shape), storage)


def _assign_names(reader: CheckpointReader, entries: dict[str, _Entry], buffer_names: set[str]) -> None:
    """Strip the common prefix, set buffers aside and fold shared-storage ties."""
    renamed, reader.prefix = strip_common_prefix(list(entries))
    by_storage: dict[tuple, str] = {}
    for name in sorted(renamed, key=_tie_preference):
        original = renamed[name]
        entry = entries[original]
        if _is_buffer(name, entry.dtype) or original in buffer_names or entry.key in buffer_names:
            reader.buffers.append(original)
            continue
        if entry.storage is not None and entry.storage in by_storage:
            reader.ties[name] = by_storage[entry.storage]
            continue
        if entry.storage is not None:
            by_storage[entry.storage] = name
        reader.files[name] = entry.file
        reader._keys[name] = entry.key
        reader.dtypes[name] = entry.dtype
        reader.shapes[name] = entry.shape
    reader.buffers.sort()
    if reader.buffers:
        logger.debug("checkpoint %s: skipped buffers %s", reader.ref.path, ", ".join(reader.buffers))


def _tie_missing_outputs(reader: CheckpointReader) -> None:
    """Tie an output layer that ``config.json`` declares tied and the file omits."""
    folder = reader.ref.path if reader.ref.path.is_dir() else None
    config_path = folder / "config.json" if folder is not None else None
    if config_path is None or not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        logger.info("ignoring %s: not valid JSON", config_path)
        return
    if config.get("tie_word_embeddings") is not True:
        return
    output = TIED_OUTPUT_NAMES[0] if config.get("model_type") == "gpt_neox" else TIED_OUTPUT_NAMES[1]
    inputs = [name for name in reader.files if name.endswith(TIED_INPUT_SUFFIXES)]
    if output not in reader.files and output not in reader.ties and len(inputs) == 1:
        reader.ties[output] = inputs[0]


def _reject_empty_parameters(reader: CheckpointReader) -> None:
    empty = [name for name, shape in reader.shapes.items() if _numel(shape) == 0]
    if not empty:
        return
    example = f"{empty[0]} has shape {reader.shapes[empty[0]]}"
    raise CheckpointError(
        f"checkpoint {reader.ref.path} stores {len(empty)} of {len(reader.shapes)} parameters as "
        f"empty tensors ({example}), the placeholders of a ZeRO-3 partitioned DeepSpeed save; "
        "consolidate it first with the zero_to_fp32.py script DeepSpeed writes next to the "
        "checkpoint (python zero_to_fp32.py CHECKPOINT_DIR OUTPUT_DIR) and read the output"
    )


def _is_buffer(name: str, dtype: str) -> bool:
    floating = dtype.startswith("F") or dtype == "BF16"
    return not floating or any(name == suffix or name.endswith("." + suffix) for suffix in BUFFER_SUFFIXES)


def _tie_preference(name: str) -> tuple[bool, str]:
    """Sort key that puts output layers last, so a tie keeps the input embedding's name."""
    return (name in TIED_OUTPUT_NAMES, name)


def _dtype_code(dtype) -> str:
    text = str(dtype).removeprefix("torch.")
    return _TORCH_DTYPE_CODES.get(text, text)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
