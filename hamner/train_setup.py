"""What a run is built from, checked before anything is written: the model config, the tokenizer,
the validation sources and --init-from weights. Each problem is a TrainError with a one-line message."""
from __future__ import annotations

from pathlib import Path

import torch

from hamner import checkpoint as ckpt
from hamner.config import HamnerConfig, model_config
from hamner.curriculum import Curriculum
from hamner.data.mixture import open_validation
from hamner.data.row_source import RowSource
from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner.errors import DataError, TrainError
from hamner.train_settings import RunSettings


def checked_model_config(s: RunSettings, curriculum: Curriculum) -> HamnerConfig:
    """The preset's model config (with --tokenizer), checked against the curriculum and settings."""
    try:
        config = model_config(s.preset)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if s.tokenizer is not None:  # a file is recorded by absolute path, so checkpoints find it anywhere
        config.tokenizer = str(Path(s.tokenizer).resolve()) if Path(s.tokenizer).exists() else s.tokenizer
    if curriculum.tokenizer is not None and curriculum.tokenizer != config.tokenizer:
        raise TrainError(f"curriculum {curriculum.name!r} needs the {curriculum.tokenizer!r} tokenizer "
                         f"but preset {s.preset!r} uses {config.tokenizer!r}; pick a preset built for it")
    if s.seq_len > config.max_seq_len:
        raise TrainError(f"--seq-len {s.seq_len} exceeds the context of preset {s.preset!r} "
                         f"({config.max_seq_len} tokens)")
    if s.init_from and not Path(s.init_from).exists():
        raise TrainError(f"--init-from {s.init_from}: no checkpoint at {s.init_from}")
    if curriculum.requires_init and not (s.init_from or s.resume):
        raise TrainError(f"curriculum {curriculum.name!r} continues a trained model: give --init-from CHECKPOINT")
    if s.stage >= len(curriculum.stages):
        raise TrainError(f"--stage {s.stage} does not exist: curriculum {curriculum.name!r} has "
                         f"stages 0..{len(curriculum.stages) - 1}")
    return config


def checked_tokenizer(config: HamnerConfig) -> Tokenizer:
    """The model's tokenizer, refused when it has more tokens than the model's vocabulary."""
    tokenizer = load_tokenizer(config.tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
        raise TrainError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model "
                         f"only {config.vocab_size}")
    return tokenizer


def validation_sources(names: list[str], data: str | None,
                       tokenizer: Tokenizer) -> tuple[dict[str, RowSource], list[str]]:
    """Validation sources, and a note for each shard source left out because it has no val split."""
    sources, notes = {}, []
    for name in names:
        try:
            sources.update(open_validation([name], data, tokenizer))
        except DataError as exc:
            notes.append(f"no validation for {name}: {exc}")
    return sources, notes


def load_init_weights(model: torch.nn.Module, path: str, config: HamnerConfig, tokenizer: Tokenizer,
                      preset: str) -> None:
    """--init-from: weights of the same shape and vocabulary into `model`."""
    source, saved = ckpt.load_model(path)
    if saved.to_dict() | {"tokenizer": None} != config.to_dict() | {"tokenizer": None}:
        raise TrainError(f"--init-from {path}: its model shape differs from preset {preset!r}")
    if saved.tokenizer != config.tokenizer and load_tokenizer(saved.tokenizer).fingerprint != tokenizer.fingerprint:
        raise TrainError(f"--init-from {path}: it uses tokenizer {saved.tokenizer!r}, a different vocabulary "
                         f"from {config.tokenizer!r}")
    model.load_state_dict(source.state_dict())
