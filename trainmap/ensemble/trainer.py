"""Train a seed ensemble of tiny GPT-NeoX models and write Pythia-style checkpoints.

Run it from the command line::

    trainmap ensemble runs/ --seeds 8 --steps 300

Each run lands in ``OUT_DIR/<run>/`` with

- ``step<N>/`` written by ``save_pretrained`` (``config.json``, ``model.safetensors``);
- ``metrics.jsonl``: one ``{"step", "train_loss", "lr", "grad_norm"}`` record per
  optimizer step and one ``{"step", "eval_loss"}`` record per checkpoint;
- ``run.json``: seed, configuration, versions and status.

As in Pythia, the seed sets both the initialisation and the data order. The train
loss logged under step N is the loss of the N-th batch, computed with the parameters
of step N-1 (before the N-th update). The checkpoint ``step<N>`` contains the parameters
after N updates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trainmap.ensemble.schedule import checkpoint_schedule, parse_schedule

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
EVAL_SEED = 1234  # the same held-out windows for every run, so eval losses compare


@dataclass
class EnsembleConfig:
    """Configuration of a seed ensemble; every run shares it except the seed.

    Attributes
    ----------
    seeds : int
        Number of runs. Run ``k`` uses seed ``first_seed + k`` and is named
        ``seed<seed>``.
    first_seed : int
        Seed of the first run.
    steps : int
        Optimizer steps per run.
    width : int
        Hidden size (``hidden_size``); the MLP is 4x wider.
    layers : int
        Number of transformer blocks.
    heads : int
        Attention heads; must divide ``width``.
    seq_len : int
        Bytes per training window.
    batch_size : int
        Windows per optimizer step.
    learning_rate : float
        Peak AdamW learning rate, reached after ``warmup`` steps and then decayed
        by a cosine to 10% at the last step.
    learning_rates : list of float or None
        Per-run peak learning rates, cycled over the runs. When set, it replaces
        ``learning_rate`` and the ensemble no longer differs only by seed.
    warmup : int
        Linear warm-up steps.
    beta1, beta2 : float
        AdamW betas.
    weight_decay : float
        AdamW decoupled weight decay.
    grad_clip : float
        Global gradient-norm clip; 0 disables clipping.
    schedule : str or None
        Checkpoint steps such as ``"0,1,2,4,50:300:50"``; None uses the Pythia-like
        default from :func:`~trainmap.ensemble.schedule.checkpoint_schedule`.
    n_evenly_spaced : int
        Evenly spaced checkpoints of the default schedule.
    eval_batches : int
        Held-out batches averaged into each eval loss.
    heldout_fraction : float
        Tail of the corpus kept out of training.
    threads : int
        torch intra-op threads per run; 0 keeps torch's default.
    """

    seeds: int = 8
    first_seed: int = 0
    steps: int = 300
    width: int = 64
    layers: int = 2
    heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    learning_rate: float = 3e-3
    learning_rates: list[float] | None = None
    warmup: int = 30
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    schedule: str | None = None
    n_evenly_spaced: int = 10
    eval_batches: int = 4
    heldout_fraction: float = 0.1
    threads: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        positive = ("seeds", "steps", "width", "layers", "heads", "seq_len", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(
                f"width {self.width} is not divisible by heads {self.heads}; "
                "choose a width that is a multiple of the head count"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.learning_rates is not None and not all(lr > 0 for lr in self.learning_rates):
            raise ValueError(f"learning_rates must all be > 0, got {self.learning_rates}")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be in 0..steps ({self.steps}), got {self.warmup}")
        self.checkpoint_steps()

    def checkpoint_steps(self) -> list[int]:
        """Return the sorted steps at which every run saves a checkpoint."""
        if self.schedule:
            return parse_schedule(self.schedule, self.steps)
        return checkpoint_schedule(self.steps, self.n_evenly_spaced)

    def run_names(self) -> list[str]:
        """Return the run names, ``seed<k>``, in training order."""
        return [f"seed{self.first_seed + k}" for k in range(self.seeds)]

    def peak_lr(self, index: int) -> float:
        """Return the peak learning rate of the ``index``-th run."""
        if self.learning_rates:
            return self.learning_rates[index % len(self.learning_rates)]
        return self.learning_rate


def train_ensemble(config: EnsembleConfig, out_dir: str | Path, workers: int = 1) -> list[Path]:
    """Train every run of the ensemble that is not already complete.

    A run whose ``run.json`` records ``"status": "complete"`` with the same
    configuration is kept; an interrupted run is trained again from step 0.

    Parameters
    ----------
    config : EnsembleConfig
        Shared configuration.
    out_dir : str or Path
        Folder that receives one sub-folder per run.
    workers : int
        Runs trained at once, each in its own process with one torch thread.

    Returns
    -------
    list of Path
        The run folders, in seed order.
    """
    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for index, name in enumerate(config.run_names()):
        run_dir = out_dir / name
        if _is_complete(run_dir, config, index):
            logger.info("run %s is complete, skipping", run_dir)
            continue
        jobs.append((index, name))

    if workers <= 1 or len(jobs) <= 1:
        for index, _ in jobs:
            train_run(config, index, out_dir, progress_position=0)
    else:
        _train_in_processes(config, out_dir, jobs, workers)
    return [out_dir / name for name in config.run_names()]


def train_run(
    config: EnsembleConfig, index: int, out_dir: str | Path, progress_position: int = 0
) -> Path:
    """Train the ``index``-th run of the ensemble and write its folder.

    Returns
    -------
    Path
        The run folder ``out_dir/seed<seed>``.
    """
    import torch
    from tqdm.auto import tqdm

    from trainmap.ensemble.corpus import sample_batch, split_corpus

    seed = config.first_seed + index
    run_dir = Path(out_dir) / f"seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)

    peak_lr = config.peak_lr(index)
    started = time.time()
    _write_run_json(run_dir, config, seed, peak_lr, status="running", started=started)

    train_data, heldout = split_corpus(config.heldout_fraction)
    eval_batch = _eval_windows(heldout, config)
    model = _build_model(config, seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=peak_lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, config.warmup, config.steps)
    )
    data_order = torch.Generator().manual_seed(seed)
    save_steps = set(config.checkpoint_steps())

    with open(run_dir / METRICS_FILE, "w", encoding="utf-8") as metrics:
        final_eval = _checkpoint(model, eval_batch, run_dir, 0, metrics) if 0 in save_steps else None
        bar = tqdm(
            range(1, config.steps + 1),
            desc=run_dir.name,
            position=progress_position,
            leave=True,
            dynamic_ncols=True,
        )
        for step in bar:
            # One optimizer update; `step` counts updates done after it finishes.
            batch = sample_batch(train_data, config.batch_size, config.seq_len, data_order)
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _clip_gradients(model, config.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()

            train_loss = loss.item()
            _write_record(
                metrics,
                {"step": step, "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm},
            )
            if step % 10 == 0 or step == config.steps:
                bar.set_postfix(loss=f"{train_loss:.3f}", refresh=False)
            if step in save_steps:
                final_eval = _checkpoint(model, eval_batch, run_dir, step, metrics)
        bar.close()

    _write_run_json(
        run_dir,
        config,
        seed,
        peak_lr,
        status="complete",
        started=started,
        final_eval_loss=final_eval,
    )
    return run_dir


def _build_model(config: EnsembleConfig, seed: int):
    """Return a freshly initialised GPT-NeoX with a byte vocabulary, seeded by ``seed``."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from trainmap.ensemble.corpus import VOCAB_SIZE

    model_config = GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=config.width,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.width,
        max_position_embeddings=config.seq_len,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config)
    model.train()
    return model


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Return the learning-rate multiplier: linear warm-up, cosine decay to 0.1."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _clip_gradients(model, max_norm: float) -> float:
    """Clip the global gradient norm when ``max_norm > 0``; return the norm before."""
    import torch

    parameters = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    norms = torch.stack([p.grad.detach().norm() for p in parameters])
    return float(norms.norm())


def _eval_windows(heldout, config: EnsembleConfig):
    """Return the fixed held-out windows, shape (eval_batches * batch_size, seq_len)."""
    import torch

    from trainmap.ensemble.corpus import sample_batch

    generator = torch.Generator().manual_seed(EVAL_SEED)
    return sample_batch(heldout, config.eval_batches * config.batch_size, config.seq_len, generator)


def _evaluate(model, windows) -> float:
    """Return the mean next-byte loss of ``model`` on the held-out windows."""
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for chunk in windows.split(64):
            losses.append(model(input_ids=chunk, labels=chunk).loss.item() * len(chunk))
    model.train()
    return sum(losses) / len(windows)


def _checkpoint(model, eval_windows, run_dir: Path, step: int, metrics) -> float:
    """Evaluate, log the eval loss and save ``step<N>/`` atomically; return the loss."""
    eval_loss = _evaluate(model, eval_windows)
    _write_record(metrics, {"step": step, "eval_loss": eval_loss})
    save_checkpoint(model, run_dir / f"step{step}")
    return eval_loss


def save_checkpoint(model, target: Path) -> None:
    """Write ``model`` with ``save_pretrained`` into ``target`` atomically.

    The files go to a hidden sibling folder first, which is renamed into place
    once complete, so a killed process never leaves a ``step<N>`` folder that looks
    complete but is not.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    model.save_pretrained(partial)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)


def _write_record(stream, record: dict) -> None:
    """Append one JSON line and flush, so a killed run keeps what it logged."""
    stream.write(json.dumps(record, allow_nan=True) + "\n")
    stream.flush()


def _write_run_json(
    run_dir: Path,
    config: EnsembleConfig,
    seed: int,
    peak_lr: float,
    status: str,
    started: float,
    final_eval_loss: float | None = None,
) -> None:
    """Write ``run.json`` atomically."""
    import torch
    import transformers

    from trainmap import __version__
    from trainmap.ensemble.corpus import corpus_fingerprint

    record = {
        "run": run_dir.name,
        "seed": seed,
        "status": status,
        "peak_learning_rate": peak_lr,
        "config": dataclasses.asdict(config),
        "checkpoint_steps": config.checkpoint_steps(),
        "final_eval_loss": final_eval_loss,
        "corpus": corpus_fingerprint(),
        "wall_seconds": round(time.time() - started, 2),
        "versions": {
            "trainmap": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    write_json_atomic(run_dir / RUN_FILE, record)


def write_json_atomic(path: Path, record: dict) -> None:
    """Write ``record`` as indented JSON via a temporary file and ``os.replace``."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(record, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _is_complete(run_dir: Path, config: EnsembleConfig, index: int) -> bool:
    """Return True when ``run_dir`` contains a finished run of this configuration."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recorded = record.get("config") or {}
    return (
        record.get("status") == "complete"
        and record.get("seed") == config.first_seed + index
        and record.get("peak_learning_rate") == config.peak_lr(index)
        and _run_identity(recorded) == _run_identity(dataclasses.asdict(config))
    )


def _run_identity(config: dict) -> dict:
    """Return the fields that change what one run computes.

    The ensemble size, the first seed and the thread count do not change a run,
    so adding seeds to an ensemble keeps its finished runs.
    """
    ignored = {"seeds", "first_seed", "threads", "learning_rate", "learning_rates"}
    return {key: value for key, value in config.items() if key not in ignored}


def _train_in_processes(config: EnsembleConfig, out_dir: Path, jobs, workers: int) -> None:
    """Train ``jobs`` in a spawn-based process pool, one torch thread per process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    single_threaded = dataclasses.replace(config, threads=1)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(train_run, single_threaded, index, out_dir, position % workers)
            for position, (index, _) in enumerate(jobs)
        ]
        for future in futures:
            future.result()
