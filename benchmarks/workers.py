"""Measure the speed-up of ``trainmap extract --workers N`` and of the result cache.

Run it from the repository root::

    python benchmarks/workers.py --workdir /tmp/trainmap-workers

It builds one randomly initialised GPT-NeoX of Pythia-160M's shape, saves it as
``--checkpoints`` step folders of one run (each a slightly perturbed copy, so no
two share a digest), then times ``extract_runs`` on them with 1 and 2 workers and
no cache, and once more with a warm cache. ``--runs DIR`` times an existing
folder of runs instead, for example an ensemble of many small checkpoints::

    trainmap ensemble /tmp/small --seeds 16 --steps 300
    python benchmarks/workers.py --workdir /tmp/trainmap-workers --runs /tmp/small --features all Every timing runs in a fresh Python
process, so imports and page-cache state are alike; the first, untimed pass
reads every file once so that all timings start from the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the checkpoints (about 0.7 GB each)")
    parser.add_argument("--checkpoints", type=int, default=6, help="step folders to extract (default 6)")
    parser.add_argument("--runs", type=Path, help="time this folder of runs instead of building checkpoints")
    parser.add_argument("--features", default="hu", help="feature families (default hu)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per setting; the fastest is kept")
    parser.add_argument("--child", nargs=3, metavar=("RUNS", "WORKERS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(Path(args.child[0]), int(args.child[1]), args.child[2], args.features)

    runs = args.runs or args.workdir / "runs"
    if args.runs is None:
        _build(runs / "pythia160m-shape", args.checkpoints)
    _time(runs, 1, "none", args.features)  # warm the page cache; not reported
    from trainmap.checkpoints import find_runs

    count = sum(len(run.checkpoints) for run in find_runs(runs))
    results = {"machine": _machine(), "runs": str(runs), "checkpoints": count, "features": args.features,
               "date": time.strftime("%Y-%m-%d")}
    for workers in (1, 2):
        results[f"workers_{workers}_s"] = min(_time(runs, workers, "none", args.features) for _ in range(args.repeats))
    cache = args.workdir / "cache"
    _time(runs, 1, str(cache), args.features)  # fills the cache
    results["cached_rerun_s"] = min(_time(runs, 1, str(cache), args.features) for _ in range(args.repeats))
    results["speedup_2_workers"] = results["workers_1_s"] / results["workers_2_s"]
    print(json.dumps(results, indent=2))
    return 0


def _build(run: Path, count: int) -> None:
    """Save ``count`` perturbed copies of a Pythia-160M-shaped GPT-NeoX as step folders."""
    if run.is_dir() and len(list(run.glob("step*"))) == count:
        return
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config)
    for step in range(count):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 1e-4)
        model.save_pretrained(run / f"step{step * 1000}")


def _time(runs: Path, workers: int, cache: str, features: str) -> float:
    """Return the seconds one extraction took in a fresh process."""
    command = [sys.executable, __file__, "--workdir", str(runs.parent), "--features", features,
               "--child", str(runs), str(workers), cache]
    output = subprocess.run(command, check=True, capture_output=True, text=True,
                            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPOSITORY))).stdout
    return float(output.strip().splitlines()[-1])


def _child(runs: Path, workers: int, cache: str, features: str) -> int:
    """Extract ``runs`` once and print the seconds it took (imports excluded)."""
    from trainmap.checkpoints import find_runs
    from trainmap.features import extract_runs, resolve_families

    found = find_runs(runs)
    families = resolve_families(features)
    started = time.perf_counter()
    extract_runs(found, families, progress=False, workers=workers, cache_dir=None if cache == "none" else cache)
    print(time.perf_counter() - started)
    return 0


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
