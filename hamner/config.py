"""The Hamner model's shape and the named presets.

A `HamnerConfig` is everything needed to rebuild a model (checkpoints store `to_dict()`), plus
the tokenizer spec its vocabulary belongs to, so a checkpoint always knows how to read text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class HamnerConfig:
    """Shape and initialisation of a Llama-style decoder (pre-norm, GQA, SwiGLU, RoPE, tied embeddings).

    `tokenizer` is the spec string the data layer's `load_tokenizer` understands: "bytes", a
    tokenizer.json path or a Hugging Face hub name.
    """

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    scale_residual_init: bool = False
    activation_checkpointing: bool = False
    tokenizer: str = "bytes"
    # Hebbian fast-weight memory ("hebbian"): the plasticity alpha of its decay
    # alpha * (0.99 + 0.01 sigmoid(theta)) until a curriculum stage sets the `plasticity` knob.
    hebbian_plasticity: float = 0.99
    # TTT-Linear ("ttt_linear"): tokens per inner gradient step, and the inner learning rate's
    # scale (token j steps with ttt_base_lr * sigmoid(x_j w + b) / head_dim).
    ttt_mini_batch: int = 16
    ttt_base_lr: float = 1.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                     "intermediate_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim (hidden_size / n_heads = {self.head_dim}) must be even for RoPE")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HamnerConfig:
        """Inverse of `to_dict`; unknown keys are an error (they mean a foreign or newer config)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown HamnerConfig keys: {', '.join(unknown)}")
        return cls(**d)


COSMO2_TOKENIZER = "HuggingFaceTB/cosmo2-tokenizer"

PRESETS: dict[str, HamnerConfig] = {
    # 47,190,528 parameters.
    "v3-50m": HamnerConfig(vocab_size=49152, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
                           intermediate_size=1365, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER),
    # 163,609,344 parameters.
    "v2-164m": HamnerConfig(vocab_size=49152, hidden_size=768, n_layers=20, n_heads=12, n_kv_heads=4,
                            intermediate_size=2048, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER),
    # Byte-level (256 bytes + <|endoftext|> at id 256), 759,040 parameters: small enough that the demo
    # curriculum's ~2.5M tokens train in about three minutes on 2 CPU cores.
    "demo": HamnerConfig(vocab_size=257, hidden_size=128, n_layers=4, n_heads=4, n_kv_heads=2,
                         intermediate_size=344, max_seq_len=256, tokenizer="bytes"),
}


def model_config(name: str) -> HamnerConfig:
    """A fresh copy of the preset called `name`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
