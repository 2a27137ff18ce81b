"""Time ``hu/`` extraction against the PolyPythias reference computation.

Run from the repository root::

    python benchmarks/extract.py                    # hu/ vs reference, floor, family costs
    python benchmarks/extract.py --contention       # also with a busy process beside it
    python benchmarks/extract.py --threads 1 --repeats 5

The first run builds a randomly initialised Pythia-160M-shaped GPT-NeoX model
with transformers, saves it with ``save_pretrained`` as ``step0`` (float32
safetensors, about 650 MB) and a perturbed copy as ``step1`` under
``--workdir``, and reuses them afterwards. Every timing reads the checkpoint
from the page cache (one untimed read warms it). trainmap's timings are the
median of ``--repeats`` runs; the reference, which takes tens of seconds, runs
once.

What it reports, per checkpoint:

- reference: two float32 SVDs per matrix (``matrix_norm(ord=2)`` and
  ``svd(compute_uv=False)``), float32 means, variances and median over all
  tensors held in memory, as in ``polypythias/training-maps/extract_metrics.py``
  of EleutherAI/pythia;
- trainmap: ``extract_checkpoint(ref, ("hu",))``, tensor by tensor;
- floor: the larger of two times. One is reading every tensor with
  safetensors, with one reduction per tensor to force the bytes in. The other
  is the float32 Gram products ``A^T A`` of the ``hu/`` matrices alone, as full
  matrix products. trainmap's symmetric products, float64 products, reading
  through trainmap's reader (which counts non-finite values) and hashing the
  weight file (the reader's ``flag/digest``) are timed too;
- agreement: trainmap's features against float64 values and the reference's;
- each family's cost, extracted alone on ``step1`` (``dynamics/`` reads ``step0``
  beside it), all families together, and no family (what every extraction
  pays: reading, the reader's non-finite count and its file hash);
- both implementations again in child processes with ``OMP_WAIT_POLICY`` unset
  (OpenMP's default);
- with ``--contention``: both in child processes while another process
  multiplies matrices on every core, with ``OMP_WAIT_POLICY`` set to ``PASSIVE``
  (what the CLI sets), unset, and ``ACTIVE`` (trainmap only: spinning threads).

Timings in this process use ``OMP_WAIT_POLICY=PASSIVE`` unless the environment
sets it, like the CLI. ``--threads`` sets torch's thread count for both
implementations; trainmap also runs its eigendecompositions on one helper
thread, so it uses one thread more than that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FAMILIES = ("hu", "layers", "qk", "unembed", "scale", "dynamics")
# Agreement of trainmap's features with the expected values: relative, with an
# absolute floor for means and medians near zero.
AGREEMENT_REL = 1e-5
AGREEMENT_ABS = 1e-9
REFERENCE_REPEATS = 1  # one reference run takes tens of seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/trainmap-bench"),
                        help="folder for the benchmark checkpoints (default /tmp/trainmap-bench)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both implementations (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow reference timing")
    parser.add_argument("--contention", action="store_true", help="also time hu/ beside a busy process")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--child", choices=["trainmap", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = args.workdir / "pythia160m-init"
    if args.child == "trainmap":
        print(json.dumps({"seconds": _time_trainmap(run_dir / "step0", ("hu",), args.repeats)}))
        return 0
    if args.child == "reference":
        print(json.dumps({"seconds": _median_time(lambda: reference_hu(run_dir / "step0"), args.repeats)}))
        return 0

    build_checkpoints(run_dir)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "command": " ".join(["python", "benchmarks/extract.py", *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_before": os.getloadavg()[0],
    }
    _warm(run_dir)
    results["read_s"] = _median_time(lambda: _read_raw(run_dir / "step0"), args.repeats)
    results["reader_s"] = _median_time(lambda: _read_with_reader(run_dir / "step0"), args.repeats)
    results["hash_s"] = _median_time(lambda: _hash(run_dir / "step0"), args.repeats)
    results["gram_s"] = _time_gram(run_dir / "step0", args.repeats, symmetric=False)
    results["symmetric_gram_s"] = _time_gram(run_dir / "step0", args.repeats, symmetric=True)
    results["gram64_s"] = _time_gram(run_dir / "step0", args.repeats, symmetric=False, dtype="float64")
    results["floor_s"] = max(results["read_s"], results["gram_s"])
    results["trainmap_s"] = _time_trainmap(run_dir / "step0", ("hu",), args.repeats)
    results["ratio_to_floor"] = results["trainmap_s"] / results["floor_s"]
    if not args.skip_reference:
        start = time.perf_counter()
        reference = reference_hu(run_dir / "step0")
        results["reference_s"] = time.perf_counter() - start
        results["speedup"] = results["reference_s"] / results["trainmap_s"]
        results["agreement"] = _compare(run_dir / "step0", reference)
    results["family_s"] = {"none": _time_trainmap(run_dir / "step1", (), args.repeats)}
    results["family_s"].update({family: _time_trainmap(run_dir / "step1", (family,), args.repeats) for family in FAMILIES})
    results["family_s"]["all"] = _time_trainmap(run_dir / "step1", FAMILIES, args.repeats)
    if not args.skip_reference:
        results["policy_default"] = {kind: _child(kind, None, args) for kind in ("trainmap", "reference")}
    if args.contention:
        results["contention"] = _contention(args)
    results["load_after"] = os.getloadavg()[0]

    print(_markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results.get("agreement", {}).get("agree", True) else 1


def build_checkpoints(run_dir: Path) -> None:
    """Save a random-init Pythia-160M-shaped GPT-NeoX as step0 and a perturbed copy as step1."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    step0, step1 = run_dir / "step0", run_dir / "step1"
    if not (step0 / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = GPTNeoXConfig(
            vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=2048, rotary_pct=0.25,
            use_parallel_residual=True, tie_word_embeddings=False,
        )
        GPTNeoXForCausalLM(config).save_pretrained(step0)
    if not (step1 / "model.safetensors").is_file():
        step1.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(1)
        tensors = load_file(step0 / "model.safetensors")
        moved = {name: value + 1e-3 * value.abs().mean() * torch.randn(value.shape, generator=generator)
                 for name, value in tensors.items()}
        save_file(moved, step1 / "model.safetensors", metadata={"format": "pt"})
        (step1 / "config.json").write_text((step0 / "config.json").read_text())


def reference_hu(checkpoint: Path) -> dict[str, float]:
    """Compute the hu/ features the way the PolyPythias reference does, in float32.

    All parameters are loaded first (the reference works on a loaded model);
    each kept weight matrix gets two SVDs.
    """
    import numpy as np
    import torch
    from safetensors.torch import load_file

    parameters = load_file(checkpoint / "model.safetensors")
    weights, biases = [], []
    for name, value in parameters.items():
        if name.startswith("embed") or "norm" in name.lower():
            continue
        if name.endswith(".weight"):
            weights.append(value.view(value.shape[0], -1))
        elif name.endswith(".bias"):
            biases.append(value.view(value.shape[0], -1))
    per_matrix: dict[str, list[float]] = {}
    for matrix in weights:
        for key, value in _reference_matrix_metrics(matrix).items():
            per_matrix.setdefault(key, []).append(value)
    result = {f"hu/{key}": float(np.mean(values)) for key, values in per_matrix.items()}
    for tensors, suffix in ((weights, "w"), (biases, "b")):
        pooled = torch.cat([tensor.flatten() for tensor in tensors])
        result[f"hu/mu_{suffix}"] = pooled.mean().item()
        result[f"hu/sigma_{suffix}"] = pooled.var().item()
        result[f"hu/median_{suffix}"] = pooled.median().item()
    return result


def _reference_matrix_metrics(matrix) -> dict[str, float]:
    import torch

    l1 = torch.linalg.vector_norm(matrix, ord=1).item()
    l2 = torch.linalg.vector_norm(matrix, ord=2).item()
    trace = torch.trace(matrix).item()
    spectral = torch.linalg.matrix_norm(matrix, ord=2).item()
    singular = torch.svd(matrix, compute_uv=False).S
    singular[singular < 1e-5] = 0.0
    return {"L1": l1, "L2": l2, "L1_L2": l1 / l2, "trace": trace, "lambda_max": spectral,
            "trace_lambda": trace / spectral, "mu_lambda": singular.mean().item(),
            "sigma_lambda": singular.var().item()}


def _compare(checkpoint: Path, reference: dict[str, float]) -> dict:
    """Compare trainmap's hu/ features with the reference's and with float64 values.

    The spectral features (from singular values) are compared with the
    reference, whose float32 SVDs resolve them to about 1e-6. The others are
    compared with a float64 evaluation of the same definitions, because the
    reference's float32 norms and means over millions of values are off by up
    to a few percent. Returns the largest relative differences and whether
    trainmap agrees within ``AGREEMENT_REL``.
    """
    from trainmap.checkpoints import CheckpointRef
    from trainmap.features.extract import extract_checkpoint
    from trainmap.features.hu import FEATURES

    ours = extract_checkpoint(CheckpointRef("bench", 0, checkpoint), ("hu",))
    exact = _float64_entry_features(checkpoint)
    spectral = ("hu/lambda_max", "hu/trace_lambda", "hu/mu_lambda", "hu/sigma_lambda")
    largest = {"trainmap_vs_truth": 0.0, "reference_vs_float64": 0.0}
    agree = True
    for feature in FEATURES:
        truth = reference[feature] if feature in spectral else exact[feature]
        difference = abs(ours[feature] - truth)
        largest["trainmap_vs_truth"] = max(largest["trainmap_vs_truth"], difference / max(abs(truth), 1e-300))
        if feature not in spectral:
            reference_error = abs(reference[feature] - truth) / max(abs(truth), 1e-300)
            largest["reference_vs_float64"] = max(largest["reference_vs_float64"], reference_error)
        if difference > AGREEMENT_REL * abs(truth) + AGREEMENT_ABS:
            agree = False
            print(f"{feature}: trainmap {ours[feature]!r}, expected {truth!r}", file=sys.stderr)
    return {**largest, "agree": agree}


def _float64_entry_features(checkpoint: Path) -> dict[str, float]:
    """Return the hu/ features that need no singular values, computed in float64."""
    import numpy as np
    import torch
    from safetensors import safe_open

    per_matrix: dict[str, list[float]] = {"L1": [], "L2": [], "L1_L2": [], "trace": []}
    pooled: dict[str, list[torch.Tensor]] = {"w": [], "b": []}
    with safe_open(checkpoint / "model.safetensors", framework="pt") as handle:
        for name in handle.keys():
            if name.startswith("embed") or "norm" in name.lower():
                continue
            value = handle.get_tensor(name).double()
            if name.endswith(".weight"):
                matrix = value.reshape(value.shape[0], -1)
                l1, l2 = float(matrix.abs().sum()), float(matrix.norm())
                for key, metric in (("L1", l1), ("L2", l2), ("L1_L2", l1 / l2), ("trace", float(torch.trace(matrix)))):
                    per_matrix[key].append(metric)
                pooled["w"].append(value.flatten().float())
            elif name.endswith(".bias"):
                pooled["b"].append(value.flatten().float())
    result = {f"hu/{key}": float(np.mean(values)) for key, values in per_matrix.items()}
    for suffix, chunks in pooled.items():
        values = torch.cat(chunks)
        result[f"hu/median_{suffix}"] = float(values.median())
        values = values.double()
        result[f"hu/mu_{suffix}"] = float(values.mean())
        result[f"hu/sigma_{suffix}"] = float(values.var())
    return result


def _time_trainmap(checkpoint: Path, families: tuple[str, ...], repeats: int) -> float:
    from trainmap.checkpoints import CheckpointRef
    from trainmap.features.extract import extract_checkpoint

    step = int(checkpoint.name.removeprefix("step"))
    ref = CheckpointRef("bench", step, checkpoint)
    initial = CheckpointRef("bench", 0, checkpoint.parent / "step0")
    previous = initial if step > 0 else None

    def extract() -> None:
        _forget_file_hashes()
        extract_checkpoint(ref, families, previous=previous, initial=initial)

    return _median_time(extract, repeats)


def _read_raw(checkpoint: Path) -> None:
    """Read every tensor with safetensors and reduce it once, so its bytes are in memory."""
    from safetensors import safe_open

    with safe_open(checkpoint / "model.safetensors", framework="pt") as handle:
        for name in handle.keys():
            handle.get_tensor(name).sum()


def _read_with_reader(checkpoint: Path) -> None:
    """Read every tensor through trainmap's reader, which also counts non-finite values."""
    from trainmap.checkpoints import CheckpointRef, open_checkpoint

    for _, tensor in open_checkpoint(CheckpointRef("bench", 0, checkpoint)).tensors():
        tensor.sum()


def _hash(checkpoint: Path) -> None:
    from trainmap.checkpoints import file_hash

    _forget_file_hashes()
    file_hash(checkpoint / "model.safetensors")


def _forget_file_hashes() -> None:
    """Empty the reader's per-process cache of file hashes.

    Extraction hashes each checkpoint once, for ``flag/digest``; repeated timings
    of one checkpoint would otherwise skip that cost after the first run.
    """
    from trainmap.checkpoints import integrity

    integrity._hash_cache.clear()


def _time_gram(checkpoint: Path, repeats: int, symmetric: bool, dtype: str = "float32") -> float:
    """Time the Gram products of the hu/ matrices, tensors already in memory (and in ``dtype``).

    ``symmetric`` uses trainmap's block products, which skip the lower triangle.
    """
    import torch
    from safetensors.torch import load_file

    from trainmap.features.hu import parameter_kind
    from trainmap.features.spectra import gram_float32

    tensors = load_file(checkpoint / "model.safetensors")
    matrices = []
    for name, value in tensors.items():
        if parameter_kind(name) == "weight":
            matrix = value.reshape(value.shape[0], -1).to(getattr(torch, dtype))
            matrices.append(matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T)
    if symmetric:
        return _median_time(lambda: [gram_float32(matrix) for matrix in matrices], repeats)
    return _median_time(lambda: [matrix.T @ matrix for matrix in matrices], repeats)


def _warm(run_dir: Path) -> None:
    for step in ("step0", "step1"):
        _read_raw(run_dir / step)


def _median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _child(kind: str, policy: str | None, args, busy: bool = False) -> float:
    """Time one implementation in a child process with OMP_WAIT_POLICY set to ``policy`` (None: unset)."""
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        environment["OMP_WAIT_POLICY"] = policy
    repeats = REFERENCE_REPEATS if kind == "reference" else args.repeats
    command = [sys.executable, __file__, "--child", kind, "--workdir", str(args.workdir), "--repeats", str(repeats)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(output.stdout.strip().splitlines()[-1])["seconds"]


def _contention(args) -> dict[str, dict[str, float]]:
    """Time both implementations in child processes beside a process that keeps every core busy."""
    busy_code = (
        "import torch\n"
        "a = torch.randn(1024, 1024)\n"
        "while True:\n"
        "    a = torch.tanh(a @ a * 1e-3)\n"
    )
    busy = subprocess.Popen([sys.executable, "-c", busy_code], env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    result = {}
    try:
        time.sleep(2.0)
        for policy in ("PASSIVE", None, "ACTIVE"):
            label = policy or "unset"
            result[label] = {"trainmap": _child("trainmap", policy, args)}
            if policy != "ACTIVE" and not args.skip_reference:
                result[label]["reference"] = _child("reference", policy, args)
    finally:
        busy.terminate()
        busy.wait(timeout=30)
    return result


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {model}, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}"


def _markdown(results: dict) -> str:
    lines = [
        f"- date: {results['date']}",
        f"- machine: {results['machine']}",
        f"- command: `{results['command']}`",
        f"- torch {results['torch']}, {results['threads']} threads, OMP_WAIT_POLICY={results['omp_wait_policy']}",
        f"- load average (1 min) before / after: {results['load_before']:.2f} / {results['load_after']:.2f}",
        "",
        "| measurement | seconds per checkpoint |",
        "| --- | --- |",
    ]
    if "reference_s" in results:
        lines.append(f"| reference (two float32 SVDs per matrix) | {results['reference_s']:.2f} |")
    lines += [
        f"| trainmap hu/ | {results['trainmap_s']:.2f} |",
        f"| read every tensor (safetensors) | {results['read_s']:.2f} |",
        f"| float32 Gram products A^T A alone | {results['gram_s']:.2f} |",
        f"| floor (larger of the two above) | {results['floor_s']:.2f} |",
        f"| trainmap's symmetric Gram products alone | {results['symmetric_gram_s']:.2f} |",
        f"| float64 Gram products A^T A alone | {results['gram64_s']:.2f} |",
        f"| read every tensor through trainmap's reader (counts non-finite values) | {results['reader_s']:.2f} |",
        f"| SHA-256 of the weight file (the reader's digest flag) | {results['hash_s']:.2f} |",
        "",
    ]
    if "reference_s" in results:
        lines.append(f"- speed-up over the reference: {results['speedup']:.1f}x")
        agreement = results["agreement"]
        lines.append(f"- trainmap's hu/ features against float64 values (the reference's for the four spectral "
                     f"ones): largest relative difference {agreement['trainmap_vs_truth']:.1e}, "
                     f"{'within' if agreement['agree'] else 'NOT within'} {AGREEMENT_REL:g}")
        lines.append(f"- the reference's float32 norms and means against float64: largest relative difference "
                     f"{agreement['reference_vs_float64']:.1e}")
    lines.append(f"- trainmap hu/ over the floor: {results['ratio_to_floor']:.2f}x")
    lines += ["", "| families | seconds per checkpoint |", "| --- | --- |"]
    lines += [f"| {family} | {seconds:.2f} |" for family, seconds in results["family_s"].items()]
    if "policy_default" in results:
        default = results["policy_default"]
        lines += ["", f"With OMP_WAIT_POLICY unset: reference {default['reference']:.2f} s, trainmap hu/ "
                      f"{default['trainmap']:.2f} s, speed-up {default['reference'] / default['trainmap']:.1f}x."]
    if "contention" in results:
        lines += ["", "| beside a busy process | trainmap hu/ s | reference s |", "| --- | --- | --- |"]
        for policy, seconds in results["contention"].items():
            reference = f"{seconds['reference']:.2f}" if "reference" in seconds else "not run"
            lines.append(f"| OMP_WAIT_POLICY={policy} | {seconds['trainmap']:.2f} | {reference} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
