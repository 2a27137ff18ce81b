"""Torch files are loaded without running code unless the user trusts them."""

import argparse
from pathlib import Path

import pytest
import torch

import checkpoint_writers as writers
from trainmap.checkpoints import UnsafeCheckpointError, load_run, open_checkpoint, trusted_pickles
from trainmap.features import extract_runs


def write_marker(path: str) -> str:
    """The planted payload: unpickling calls this, which writes a file."""
    Path(path).write_text("code from the checkpoint ran", encoding="utf-8")
    return path


class Payload:
    """An object whose unpickling calls :func:`write_marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return writers.tiny_gpt_neox(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def planted_run(weights, tmp_path):
    """A run whose step100.pt would write ``marker`` when fully unpickled; returns (run, marker)."""
    marker = tmp_path / "marker.txt"
    writers.write_torch_file(tmp_path / "run" / "step100.pt", {"model": dict(weights), "extra": Payload(marker)})
    return tmp_path / "run", marker


def test_planted_pickle_never_runs(planted_run):
    run, marker = planted_run
    table, summary = extract_runs([load_run(run)], progress=False)
    assert not marker.exists()
    assert bool(table["flag/unreadable"].iloc[0])
    assert "--trust-pickles" in table["flag/error"].iloc[0]
    assert summary.skipped[0][0].endswith("step100.pt")


def test_unsafe_error_names_file_and_global(planted_run):
    run, marker = planted_run
    with pytest.raises(UnsafeCheckpointError, match=r"step100\.pt needs the Python global\(s\) .*write_marker"):
        open_checkpoint(load_run(run).checkpoints[0])
    assert not marker.exists()


def test_trusted_pickle_runs_and_is_flagged(planted_run):
    """With the opt-in the payload really runs, which shows the guard above is needed."""
    run, marker = planted_run
    with trusted_pickles():
        table, summary = extract_runs([load_run(run)], progress=False, families=("hu",))
    assert marker.exists()
    assert bool(table["flag/trusted_pickle"].iloc[0])
    assert table["hu/L2"].notna().all()
    assert summary.flagged["trusted_pickle"] == 1


def test_namespace_global_is_named(weights, tmp_path):
    writers.write_deepspeed(tmp_path / "run" / "global_step5", weights, args=argparse.Namespace(lr=0.1))
    with pytest.raises(UnsafeCheckpointError, match=r"mp_rank_00_model_states\.pt needs .*argparse\.Namespace"):
        open_checkpoint(load_run(tmp_path / "run").checkpoints[0])


def test_trust_parameter_overrides_default(weights, tmp_path):
    writers.write_deepspeed(tmp_path / "run" / "global_step5", weights, args=argparse.Namespace(lr=0.1))
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0], trust_pickles=True)
    assert reader.trusted_pickle
    assert reader.flags()["flag/trusted_pickle"]


def test_torch_load_gets_weights_only_and_mmap(weights, tmp_path, monkeypatch):
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    writers.write_bin(tmp_path / "run" / "step1", weights)
    reader = open_checkpoint(load_run(tmp_path / "run").checkpoints[0])
    list(reader.tensors())
    assert calls
    assert all(call["weights_only"] is True for call in calls)
    assert all(call["mmap"] is True for call in calls)


def test_legacy_torch_format_loads_without_mmap(weights, tmp_path):
    path = tmp_path / "run" / "step1.pt"
    path.parent.mkdir(parents=True)
    torch.save(dict(weights), path, _use_new_zipfile_serialization=False)
    reader = open_checkpoint(load_run(path.parent).checkpoints[0])
    assert reader.names() == sorted(weights)


def test_corrupt_torch_file_is_unreadable(tmp_path):
    path = tmp_path / "run" / "step1.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file at all")
    table, _ = extract_runs([load_run(path.parent)], progress=False, families=("hu",))
    assert bool(table["flag/unreadable"].iloc[0])
    assert "not a readable torch file" in table["flag/error"].iloc[0]
