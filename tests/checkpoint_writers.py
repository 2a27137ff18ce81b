"""Write the weights of one tiny GPT-NeoX in every checkpoint layout trainmap reads.

The tests of ``trainmap.checkpoints`` import these helpers. Every writer takes a
state dict with Hugging Face GPT-NeoX names (as ``save_pretrained`` writes them)
and a target path under ``tmp_path``, and returns the path of the checkpoint it
wrote (a folder or a single file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LAYERS = 2


def tiny_gpt_neox(folder: Path, seed: int = 0, tie: bool = False) -> dict[str, torch.Tensor]:
    """Save a 2-block GPT-NeoX with ``save_pretrained`` into ``folder``; return its tensors."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():  # random init leaves biases at 0; give them values so bias features differ
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def write_safetensors(target: Path, tensors: dict) -> Path:
    target.mkdir(parents=True)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def write_safetensors_sharded(target: Path, tensors: dict) -> Path:
    target.mkdir(parents=True)
    weight_map = {}
    for number, names in enumerate(_halves(tensors), start=1):
        shard = f"model-{number:05d}-of-00002.safetensors"
        save_file({name: tensors[name] for name in names}, target / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, shard))
    _write_index(target / "model.safetensors.index.json", weight_map)
    return target


def write_bin(target: Path, tensors: dict) -> Path:
    target.mkdir(parents=True)
    torch.save(dict(tensors), target / "pytorch_model.bin")
    return target


def write_bin_sharded(target: Path, tensors: dict) -> Path:
    target.mkdir(parents=True)
    weight_map = {}
    for number, names in enumerate(_halves(tensors), start=1):
        shard = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save({name: tensors[name] for name in names}, target / shard)
        weight_map.update(dict.fromkeys(names, shard))
    _write_index(target / "pytorch_model.bin.index.json", weight_map)
    return target


def write_trainer_checkpoint(target: Path, tensors: dict, global_step: int, log_history: list[dict]) -> Path:
    """A Hugging Face Trainer ``checkpoint-<N>`` folder with ``trainer_state.json``."""
    write_safetensors(target, tensors)
    state = {"global_step": global_step, "log_history": log_history}
    (target / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    return target


def write_deepspeed(target: Path, tensors: dict, **extra) -> Path:
    """A DeepSpeed ``global_step<N>`` folder: weights under ``module``."""
    target.mkdir(parents=True)
    payload = {"module": dict(tensors), "buffer_names": [], "global_steps": 0, "dp_world_size": 1,
               "mp_world_size": 1, "ds_version": "0.14.0", **extra}
    torch.save(payload, target / "mp_rank_00_model_states.pt")
    return target


def write_neox_layers(target: Path, tensors: dict, rmsnorm: bool = False, skip_layers: tuple[int, ...] = ()) -> Path:
    """A GPT-NeoX library ``global_step<N>`` folder: one file per pipeline layer."""
    target.mkdir(parents=True)
    files: dict[int, dict] = {0: {"word_embeddings.weight": tensors["gpt_neox.embed_in.weight"]}}
    for block in range(LAYERS):
        prefix = f"gpt_neox.layers.{block}."
        files[block + 2] = {
            _scale(name[len(prefix):], rmsnorm): value for name, value in tensors.items() if name.startswith(prefix)
        }
    files[LAYERS + 3] = {
        _scale("norm." + name.rsplit(".", 1)[1], rmsnorm): value
        for name, value in tensors.items()
        if name.startswith("gpt_neox.final_layer_norm.")
    }
    files[LAYERS + 4] = {"final_linear.weight": tensors["embed_out.weight"]}
    for index, state in files.items():
        if index not in skip_layers:
            torch.save(state, target / f"layer_{index:02d}-model_00-model_states.pt")
    torch.save({"module": None, "global_steps": 0}, target / "mp_rank_00_model_states.pt")
    return target


def write_torch_file(target: Path, payload) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return target


def write_safetensors_file(target: Path, tensors: dict) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, target)
    return target


def prefixed(tensors: dict, prefix: str) -> dict:
    return {prefix + name: value for name, value in tensors.items()}


def _scale(name: str, rmsnorm: bool) -> str:
    if rmsnorm and "norm" in name and name.endswith(".weight"):
        return name[: -len("weight")] + "scale"
    return name


def _halves(tensors: dict) -> list[list[str]]:
    names = sorted(tensors)
    return [names[: len(names) // 2], names[len(names) // 2:]]


def _write_index(path: Path, weight_map: dict) -> None:
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")
