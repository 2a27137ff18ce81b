"""Pulling Pythia checkpoints, tested offline against a Hugging Face cache built in tmp_path."""

import hashlib
import os

import pytest

import checkpoint_writers as writers
from trainmap.checkpoints import find_runs
from trainmap.checkpoints.hub import (
    HubUnavailableError,
    parse_steps,
    pull_pythia,
    pythia_repo,
    weight_patterns,
)
from trainmap.features import extract_runs

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Keep huggingface_hub offline whatever a test does."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def build_cache(cache, repo_id, revision, source_folder):
    """Lay out ``source_folder``'s files as the Hub cache does: blobs, a snapshot, a ref."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in source_folder.iterdir():
        data = path.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / revision).write_text(COMMIT)


@pytest.mark.parametrize(("size", "seed", "repo"), [
    ("410m", 0, "EleutherAI/pythia-410m"),
    ("410m", 3, "EleutherAI/pythia-410m-seed3"),
    ("1.4B", 0, "EleutherAI/pythia-1.4b"),
    ("160m-deduped", 0, "EleutherAI/pythia-160m-deduped"),
])
def test_pythia_repo(size, seed, repo):
    assert pythia_repo(size, seed) == repo


def test_pythia_repo_rejects_bad_size():
    with pytest.raises(ValueError, match="invalid Pythia size '410'"):
        pythia_repo("410", 1)


def test_weight_patterns_prefer_safetensors():
    patterns = weight_patterns(["config.json", "model.safetensors", "pytorch_model.bin"])
    assert "model.safetensors" in patterns
    assert "pytorch_model.bin" not in patterns


def test_weight_patterns_fall_back_to_bin():
    patterns = weight_patterns(["config.json", "pytorch_model.bin", "tokenizer.json"])
    assert "pytorch_model.bin" in patterns
    assert "tokenizer.json" not in patterns


def test_parse_steps():
    assert parse_steps("0,1,2,4,1000:3000:1000") == [0, 1, 2, 4, 1000, 2000, 3000]


def test_parse_steps_names_bad_item():
    with pytest.raises(ValueError, match="invalid step item 'x'"):
        parse_steps("0,x")


def test_pull_reads_offline_cache(tmp_path):
    source = tmp_path / "source"
    writers.tiny_gpt_neox(source)
    cache = tmp_path / "cache"
    build_cache(cache, "EleutherAI/pythia-14m-seed3", "step1000", source)
    build_cache(cache, "EleutherAI/pythia-14m", "step1000", source)

    pulled = pull_pythia("14m", [0, 3], [1000], tmp_path / "runs", cache_dir=cache, offline=True)
    assert [item.repo_id for item in pulled] == ["EleutherAI/pythia-14m", "EleutherAI/pythia-14m-seed3"]
    runs = find_runs(tmp_path / "runs")
    assert [run.name for run in runs] == ["pythia-14m-seed0", "pythia-14m-seed3"]
    table, _ = extract_runs(runs, families=("hu",), progress=False)
    assert table["hu/L2"].notna().all()
    assert table["flag/digest"].nunique() == 1


def test_pull_offline_error_says_what_to_do(tmp_path):
    with pytest.raises(HubUnavailableError, match=(
            r"EleutherAI/pythia-14m-seed3 at revision step1000 is not in the Hugging Face cache .*"
            r"offline mode is on .*trainmap pull")):
        pull_pythia("14m", [3], [1000], tmp_path / "runs", cache_dir=tmp_path / "empty-cache")


def test_pull_follows_hf_hub_offline(tmp_path, monkeypatch):
    """With offline=None the HF_HUB_OFFLINE variable decides; no file list is requested."""
    from huggingface_hub import HfApi

    def fail(*args, **kwargs):
        raise AssertionError("listed repository files while offline")

    monkeypatch.setattr(HfApi, "list_repo_files", fail)
    with pytest.raises(HubUnavailableError, match="offline mode is on"):
        pull_pythia("14m", [3], [1000], tmp_path / "runs", cache_dir=tmp_path / "empty-cache")
