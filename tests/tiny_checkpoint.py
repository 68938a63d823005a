"""A tiny random Hamner model saved as a real checkpoint, for the chat, eval and export tests."""
from __future__ import annotations

from pathlib import Path

import torch

from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel
from hamner.run.checkpoint import save_checkpoint


def tiny_config(**overrides) -> HamnerConfig:
    """Byte-level, 2 layers, width 64, GQA (4 query heads on 2 KV heads), an odd MLP width, context 64."""
    fields = dict(vocab_size=257, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=90,
                  max_seq_len=64, tokenizer="bytes")
    return HamnerConfig(**{**fields, **overrides})


def save_tiny_run(run_dir: Path, config: HamnerConfig | None = None, seed: int = 0) -> HamnerModel:
    """Write a run directory holding one weights-only checkpoint of a seeded random model; returns the model."""
    config = config or tiny_config()
    torch.manual_seed(seed)
    model = HamnerModel(config).eval()
    save_checkpoint(Path(run_dir), ["step-00000001"], model, {"model": config.to_dict()}, None)
    return model
