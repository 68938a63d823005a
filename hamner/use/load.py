"""The one way a trained model is loaded: from a run directory (its latest checkpoint), a checkpoint
directory, a Hugging Face Llama directory or a plain state-dict file (.pt, .pth, .safetensors) of a
Llama-style model, with its tokenizer when it is to be used.

`load_model` serves everyone who reads a trained model (chat, `hamner eval`, `hamner export`, the
length study, training's --init-from); `load_for_inference` adds the tokenizer and reports every
problem as one-line `InferenceError`. The Hamner checkpoint format lives in `hamner.run.checkpoint`,
the Hugging Face one in `hamner.use.hf`: only this module knows both. A state-dict file carries no
config, so its caller names one (training's --init-from: the run's model); the file is read with
`torch.load(weights_only=True)`, which never runs code a pickle holds.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner.errors import CheckpointError, ConfigError, DataError, InferenceError, one_line
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel, build_model
from hamner.run import checkpoint as ckpt
from hamner.run.directory import CHECKPOINTS, RUNS_DIR, latest_pointer
from hamner.use.hf import GLOBAL_NAMES, hf_sources, is_hf_dir, load_hf_model

# Files holding a bare state dict (a training script's torch.save, or safetensors).
STATE_FILE_SUFFIXES = (".pt", ".pth", ".safetensors")
# Where training scripts put the model's state dict inside a saved dict.
STATE_DICT_KEYS = ("model_state_dict", "model")
# Prefixes torch.compile (`_orig_mod.`) and DataParallel/DDP (`module.`) add to every name.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# The original Hamner project's names (and a bare LlamaModel's, without "model.") -> Hugging Face Llama names.
LLAMA_RENAMES = (
    (re.compile(r"^embed_tokens\."), "model.embed_tokens."),
    (re.compile(r"^(final_)?norm\."), "model.norm."),
    (re.compile(r"^layers\.(\d+)\.(attention|self_attn)\."), r"model.layers.\1.self_attn."),
    (re.compile(r"^layers\.(\d+)\.(attn_norm|input_layernorm)\."), r"model.layers.\1.input_layernorm."),
    (re.compile(r"^layers\.(\d+)\.(mlp_norm|post_attention_layernorm)\."),
     r"model.layers.\1.post_attention_layernorm."),
    (re.compile(r"^layers\.(\d+)\.mlp\."), r"model.layers.\1.mlp."),
)


def is_state_file(path: str | Path) -> bool:
    """True when `path` is a file with a state-dict suffix (.pt, .pth, .safetensors) that stands alone: one
    beside a config.json belongs to its checkpoint or Hugging Face directory, which is read instead."""
    path = Path(path)
    return path.is_file() and path.suffix in STATE_FILE_SUFFIXES and not (path.parent / ckpt.CONFIG).is_file()


def model_dir(path: str | Path) -> Path:
    """The directory a model is read from: a Hugging Face Llama directory as it is, else the checkpoint
    `path` names (a run directory's latest, a checkpoint directory, or a file inside either)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    return directory if is_hf_dir(directory) else ckpt.resolve_checkpoint(path)


def load_model(path: str | Path, device: str | torch.device = "cpu",
               config: HamnerConfig | None = None) -> tuple[HamnerModel, HamnerConfig]:
    """(model, config) from a run, checkpoint or Hugging Face Llama directory, or from a state-dict file
    into a model of `config`; a one-line CheckpointError when it is missing, unreadable or not a model
    Hamner can hold."""
    if is_state_file(path):
        if config is None:
            raise CheckpointError(f"{path} holds weights without a model config; load it into a preset's model "
                                  "(train.py --preset NAME --init-from FILE) or export it as a directory")
        return load_state_file(path, config, device), config
    directory = model_dir(path)
    if is_hf_dir(directory):
        try:
            return load_hf_model(directory, device)
        except (OSError, KeyError, SafetensorError, CheckpointError, ConfigError) as exc:
            raise CheckpointError(f"cannot import Hugging Face directory {directory}: {one_line(exc)}") from None
    meta = ckpt.read_meta(directory)
    try:
        config = HamnerConfig.from_dict(meta["model"])
    except (TypeError, KeyError, ConfigError) as exc:
        raise CheckpointError(f"model config in {directory / ckpt.CONFIG} is invalid: {one_line(exc)}") from None
    model = build_model(config)
    ckpt.load_weights(model, directory, device="cpu")
    return model.to(device), config


def model_origin(path: str | Path) -> dict[str, str | int]:
    """Where the model at `path` (loaded already) comes from, for an export to record: the run (the folder
    holding the checkpoints, else the model's own folder), the checkpoint and the step it was saved at."""
    directory = model_dir(path).resolve()
    if is_hf_dir(directory):
        return {"run": directory.name}
    run = directory.parent.parent if directory.parent.name == CHECKPOINTS else directory
    origin: dict[str, str | int] = {"run": run.name, "checkpoint": directory.name}
    step = ckpt.read_meta(directory).get("step")
    if isinstance(step, int):
        origin["step"] = step
    return origin


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: the dict at its top or under "model_state_dict" / "model", the
    `_orig_mod.` and `module.` prefixes removed; a one-line CheckpointError when it holds none."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            saved = load_file(str(path))
        else:
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {path} as a state dict (only tensors and plain values are read, "
                              f"never code): {one_line(exc)}") from None
    for key in STATE_DICT_KEYS:
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
            break
    tensors = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)} if isinstance(saved, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path} holds no state dict (no tensors at its top or under "
                              f"{' / '.join(STATE_DICT_KEYS)})")
    out = {}
    for name, tensor in tensors.items():
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        out[name] = tensor
    return out


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def _as_hamner(tensors: dict[str, torch.Tensor], config: HamnerConfig,
               ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(Hamner-named tensors, names missing, names left over) of a Hamner or Llama-named state dict for a
    model of `config` (an untied one takes `lm_head.weight` as its head)."""
    if "embed.weight" in tensors:  # Hamner's own names
        return tensors, [], []
    if "model.embed_tokens.weight" not in tensors:
        renamed = {}
        for name, tensor in tensors.items():
            for pattern, replacement in LLAMA_RENAMES:
                name, hits = pattern.subn(replacement, name)
                if hits:
                    break
            renamed[name] = tensor
        tensors = renamed
    state, missing, used = {}, [], set()
    for ours, parts in hf_sources(config.n_layers, config.tie_embeddings).items():
        absent = [name for name in parts if name not in tensors]
        if absent:
            missing += absent
            continue
        state[ours] = torch.cat([tensors[name] for name in parts])
        used.update(parts)
    head, embed = tensors.get("lm_head.weight"), tensors.get(GLOBAL_NAMES["embed.weight"])
    if config.tie_embeddings and head is not None and embed is not None and torch.equal(head, embed):
        used.add("lm_head.weight")  # tied: the same tensor as the embedding
    return state, missing, sorted(set(tensors) - used)


def load_state_file(path: str | Path, config: HamnerConfig, device: str | torch.device = "cpu") -> HamnerModel:
    """A model of `config` holding the weights of the state-dict file `path` (Hamner, Hugging Face Llama or
    the original Hamner project's names); one CheckpointError line names every tensor that is missing,
    left over (an lm_head.weight unlike the embedding, for a tied model, among them) or of another shape than
    the model's."""
    tensors = read_state_file(path)
    model = HamnerModel(config)
    expected = model.state_dict()
    state, missing, unused = _as_hamner(tensors, config)
    missing = missing or [name for name in expected if name not in state]  # in the file's names if it has them
    unused += [name for name in state if name not in expected]
    misshapen = [f"{name} {tuple(state[name].shape)} vs {tuple(t.shape)}" for name, t in expected.items()
                 if name in state and state[name].shape != t.shape]
    problems = [f"{label}: {_names(names)}" for label, names in
                (("missing", missing), ("not in the model", unused), ("wrong shape", misshapen)) if names]
    if problems:
        raise CheckpointError(f"{path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict({name: t.to(expected[name].dtype) for name, t in state.items()})
    return model.to(device)


def newest_run(root: Path = RUNS_DIR) -> Path:
    """The run directory under `root` whose latest checkpoint was written last."""
    runs = [p for p in root.glob("*") if latest_pointer(p).is_file()] if root.is_dir() else []
    if not runs:
        raise InferenceError(f"no trained run under {root}/; pass a checkpoint (train one with hamner train)")
    return max(runs, key=lambda p: latest_pointer(p).stat().st_mtime)


def load_for_inference(path: str | Path | None,
                       device: torch.device | str = "cpu") -> tuple[HamnerModel, HamnerConfig, Tokenizer]:
    """(model in eval mode, config, tokenizer) from a run, checkpoint or Hugging Face directory (None: the
    newest run); every problem is a one-line InferenceError."""
    path = Path(path) if path is not None else newest_run()
    try:
        model, config = load_model(path, device=device)
        tokenizer = load_tokenizer(config.tokenizer)
    except (CheckpointError, DataError, OSError) as exc:
        raise InferenceError(str(exc)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise InferenceError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens; "
                             f"the model's vocabulary has only {config.vocab_size}")
    return model.eval(), config, tokenizer
