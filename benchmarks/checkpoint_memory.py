"""Measure peak memory while reading a Pythia-410M-shaped checkpoint.

Run from the repository root::

    python benchmarks/checkpoint_memory.py --workdir /tmp/trainmap-bench

It builds a GPT-NeoX with Pythia-410M's shape (24 blocks, width 1024, 16 heads,
vocabulary 50304) with random initialisation, saves it with ``save_pretrained``
as sharded safetensors, then measures, each in a fresh Python process:

- ``baseline``: importing torch, safetensors and trainmap, reading nothing;
- ``read``: :func:`trainmap.checkpoints.open_checkpoint` and every tensor from
  ``reader.tensors()``, each upcast to float32 and dropped;
- ``extract``: :func:`trainmap.features.extract.extract_checkpoint` with the
  ``hu/`` family, which also keeps float64 copies and Gram matrices.

Peak RSS is the kernel's high-water mark (``VmHWM``), which also counts
memory-mapped file pages that were touched. A sampling thread (every 5 ms) records
the peak of anonymous memory (``RssAnon``) separately. It prints one Markdown
table row per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

PYTHIA_410M = dict(
    vocab_size=50304,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=2048,
    rotary_pct=0.25,
    tie_word_embeddings=False,
)
MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/trainmap-bench"))
    parser.add_argument("--shard-size", default="500MB", help="max_shard_size passed to save_pretrained")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--measure", choices=["baseline", "read", "extract"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    checkpoint = args.workdir / f"pythia-410m-shape-{args.dtype}" / "run" / "step0"
    if args.measure:
        print(json.dumps(_measure(args.measure, checkpoint)))
        return 0

    _build(checkpoint, args.shard_size, args.dtype)
    stats = _checkpoint_stats(checkpoint)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"checkpoint: {checkpoint}: {stats['files']} shards, {stats['bytes'] / MIB:.0f} MiB on disk, "
          f"largest tensor {stats['largest_name']} {stats['largest_bytes'] / MIB:.0f} MiB as stored")
    print("| measurement | peak RSS (MiB) | peak anonymous RSS (MiB) | wall time (s) |")
    print("| --- | --- | --- | --- |")
    for mode in ("baseline", "read", "extract"):
        command = [sys.executable, __file__, "--workdir", str(args.workdir), "--dtype", args.dtype, "--measure", mode]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"| {mode} | {result['peak_rss_mib']:.0f} | {result['peak_anon_mib']:.0f} | {result['seconds']:.1f} |")
    return 0


def _build(checkpoint: Path, shard_size: str, dtype: str) -> None:
    """Save a randomly initialised Pythia-410M-shaped model once; reuse it afterwards."""
    if (checkpoint / "model.safetensors.index.json").is_file():
        return
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_410M)).to(getattr(torch, dtype))
    model.save_pretrained(checkpoint, max_shard_size=shard_size)


def _checkpoint_stats(checkpoint: Path) -> dict:
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    largest = ("", 0)
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                size = 1
                for dimension in tensor_slice.get_shape():
                    size *= dimension
                size *= 2 if tensor_slice.get_dtype() in ("BF16", "F16") else 4
                largest = max(largest, (name, size), key=lambda item: item[1])
    return {"files": len(files), "bytes": sum(path.stat().st_size for path in files),
            "largest_name": largest[0], "largest_bytes": largest[1]}


def _measure(mode: str, checkpoint: Path) -> dict:
    """Run one measurement in this process; return peak RSS figures in MiB."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import safetensors.torch  # noqa: F401 - imported by every mode, so the baseline counts it
    import torch  # noqa: F401

    from trainmap.checkpoints import load_run, open_checkpoint
    from trainmap.features.extract import extract_checkpoint

    ref = load_run(checkpoint.parent).checkpoints[0]
    sampler = _AnonSampler()
    sampler.start()
    started = time.perf_counter()
    if mode == "read":
        reader = open_checkpoint(ref)
        for _name, tensor in reader.tensors():
            del tensor
    elif mode == "extract":
        extract_checkpoint(ref, ("hu",))
    seconds = time.perf_counter() - started
    sampler.stop()
    return {"peak_rss_mib": _status_kib("VmHWM") / 1024, "peak_anon_mib": sampler.peak_kib / 1024,
            "seconds": seconds}


class _AnonSampler(threading.Thread):
    """Sample ``RssAnon`` every 5 ms and keep the maximum."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kib = _status_kib("RssAnon")
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.005):
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))


def _status_kib(field: str) -> int:
    """Return one ``/proc/self/status`` field in KiB (Linux only)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field} line; this benchmark needs Linux")


if __name__ == "__main__":
    sys.exit(main())
