"""The one way a trained model is loaded: from a run directory (its latest checkpoint), a checkpoint
directory or a Hugging Face Llama directory, with its tokenizer when it is to be used.

`load_model` serves everyone who reads a trained model (chat, `hamner eval`, `hamner export`, the
length study, training's --init-from); `load_for_inference` adds the tokenizer and reports every
problem as one-line `InferenceError`. The Hamner checkpoint format lives in `hamner.run.checkpoint`,
the Hugging Face one in `hamner.use.hf`: only this module knows both.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner.errors import CheckpointError, DataError, InferenceError, one_line
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel, build_model
from hamner.run import checkpoint as ckpt
from hamner.run.directory import RUNS_DIR, latest_pointer
from hamner.use.hf import is_hf_dir, load_hf_model


def model_dir(path: str | Path) -> Path:
    """The directory a model is read from: a Hugging Face Llama directory as it is, else the checkpoint
    `path` names (a run directory's latest, a checkpoint directory, or a file inside either)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    return directory if is_hf_dir(directory) else ckpt.resolve_checkpoint(path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HamnerModel, HamnerConfig]:
    """(model, config) from a run, checkpoint or Hugging Face Llama directory; a one-line CheckpointError
    when it is missing, unreadable or not a model Hamner can hold."""
    directory = model_dir(path)
    if is_hf_dir(directory):
        try:
            return load_hf_model(directory, device)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise CheckpointError(f"cannot import Hugging Face directory {directory}: {one_line(exc)}") from None
    meta = ckpt.read_meta(directory)
    try:
        config = HamnerConfig.from_dict(meta["model"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"model config in {directory / ckpt.CONFIG} is invalid: {one_line(exc)}") from None
    model = build_model(config)
    ckpt.load_weights(model, directory, device="cpu")
    return model.to(device), config


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
