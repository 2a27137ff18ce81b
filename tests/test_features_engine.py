"""Parallel, cached and resumable extraction."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainmap.checkpoints import find_runs
from trainmap.features import extract_runs
from trainmap.features.engine import FEATURE_VERSION, Job, ResultCache, run_jobs
from trainmap.features.extract import compute_job

REPOSITORY = Path(__file__).resolve().parents[1]
FAMILIES = ("hu", "layers", "qk", "dynamics", "loss")


@pytest.fixture
def two_runs(micro_runs, tmp_path):
    """Writable copies of micro runs seed0 and seed3."""
    for name in ("seed0", "seed3"):
        shutil.copytree(micro_runs / name, tmp_path / "runs" / name)
    return tmp_path / "runs"


def assert_same_table(first: pd.DataFrame, second: pd.DataFrame):
    pd.testing.assert_frame_equal(first.reset_index(drop=True), second.reset_index(drop=True), check_exact=False,
                                  rtol=1e-9, atol=1e-12)


def test_two_workers_match_serial(two_runs):
    runs = find_runs(two_runs)
    serial, _ = extract_runs(runs, FAMILIES, progress=False)
    parallel, _ = extract_runs(runs, FAMILIES, progress=False, workers=2)
    assert_same_table(serial, parallel)


def test_rerun_takes_everything_from_cache(two_runs, tmp_path):
    runs = find_runs(two_runs)
    first, summary = extract_runs(runs, FAMILIES, progress=False, cache_dir=tmp_path / "cache")
    assert summary.computed == len(first)
    again, summary = extract_runs(runs, FAMILIES, progress=False, cache_dir=tmp_path / "cache")
    assert summary.computed == 0
    assert summary.from_cache == len(first)
    assert_same_table(first, again)


def test_new_checkpoints_are_the_only_work(two_runs, tmp_path):
    cache = tmp_path / "cache"
    extract_runs(find_runs(two_runs), FAMILIES, progress=False, cache_dir=cache)
    for step in (30, 36):
        shutil.copytree(two_runs / "seed0" / "step24", two_runs / "seed0" / f"step{step}")
    table, summary = extract_runs(find_runs(two_runs), FAMILIES, progress=False, cache_dir=cache)
    assert summary.computed == 2
    assert set(table.loc[table["run"] == "seed0", "step"]) >= {30, 36}


def test_cache_key_depends_on_families_and_version(two_runs, tmp_path, monkeypatch):
    ref = find_runs(two_runs)[0].checkpoints[1]
    cache = ResultCache(tmp_path / "cache")
    hu_key = cache.key(Job(ref, ("hu",)))
    assert hu_key != cache.key(Job(ref, ("hu", "layers")))
    monkeypatch.setattr("trainmap.features.engine.FEATURE_VERSION", FEATURE_VERSION + "-next")
    assert hu_key != cache.key(Job(ref, ("hu",)))


def test_changed_file_is_recomputed(two_runs, tmp_path):
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    extract_runs(find_runs(two_runs), ("hu",), progress=False, cache_dir=cache)
    path = two_runs / "seed3" / "step24" / "model.safetensors"
    tensors = load_file(path)
    tensors["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"] *= 2
    save_file(tensors, path, metadata={"format": "pt"})
    _, summary = extract_runs(find_runs(two_runs), ("hu",), progress=False, cache_dir=cache)
    assert summary.computed == 1


def test_kill_and_resume_loses_nothing(micro_runs, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    command = [sys.executable, "-m", "trainmap", "extract", str(micro_runs), "-o", str(tmp_path / "t.parquet"),
               "--features", ",".join(FAMILIES), "--cache-dir", str(cache)]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(ResultCache(cache)) < 4 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(ResultCache(cache))
    total = sum(len(run.checkpoints) for run in find_runs(micro_runs))
    assert 0 < finished < total, "the extraction was not killed mid-way; slow it down or kill sooner"
    assert not (tmp_path / "t.parquet").exists()

    table, summary = extract_runs(find_runs(micro_runs), FAMILIES, progress=False, cache_dir=cache)
    assert summary.from_cache == finished
    assert summary.computed == total - finished
    assert len(table) == total


def test_ray_executor_matches_serial(two_runs, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'trainmap[ray]'")
    runs = find_runs(two_runs)
    serial, _ = extract_runs(runs, ("hu", "qk", "dynamics"), progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             _temp_dir=str(Path("/tmp") / f"ray-{os.getpid()}"))
    try:
        distributed, _ = extract_runs(runs, ("hu", "qk", "dynamics"), progress=False, executor="ray")
    finally:
        ray.shutdown()
    assert_same_table(serial, distributed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_cuda_matches_cpu(two_runs):
    runs = find_runs(two_runs)
    cpu, _ = extract_runs(runs, ("hu", "layers", "qk"), progress=False)
    gpu, _ = extract_runs(runs, ("hu", "layers", "qk"), progress=False, device="cuda")
    features = [c for c in cpu.columns if c.split("/")[0] in ("hu", "layers", "qk")]
    pd.testing.assert_frame_equal(cpu[features], gpu[features], rtol=1e-5, atol=1e-9)


def test_cuda_without_gpu_is_explained(two_runs):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match="use --device cpu"):
        extract_runs(find_runs(two_runs), ("hu",), progress=False, device="cuda")


def test_unknown_executor_is_rejected(two_runs):
    with pytest.raises(ValueError, match="unknown executor 'spark'"):
        run_jobs([], compute_job, executor="spark")
