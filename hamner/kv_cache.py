"""The KV cache of decoding: every layer's keys and values, preallocated and filled left to right.

`HamnerModel.forward(..., cache=...)` writes into it and `hamner.generate` drives it; it sits in its
own module so the model and the generator can both use it without importing each other.
"""
from __future__ import annotations

import torch

from hamner.config import HamnerConfig


class KVCache:
    """Keys and values of every layer for a batch, preallocated as [B, max_len, Hkv, D] and filled left to right."""

    def __init__(
        self,
        config: HamnerConfig,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.max_seq_len
        shape = (batch_size, self.max_len, config.n_kv_heads, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.pos = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int) -> KVCache:
        """A cache on the device and in the dtype of a HamnerModel's weights, as long as its context."""
        weight = model.embed.weight
        return cls(model.config, batch_size, device=weight.device, dtype=weight.dtype)

    def reset(self) -> None:
        """Forget everything cached (the buffers are reused)."""
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new k, v [B, T, Hkv, D] of `layer` at the current position; return all keys and values so far."""
        end = self.pos + k.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions, room for {self.max_len}")
        self.k[layer][:, self.pos:end] = k
        self.v[layer][:, self.pos:end] = v
        return self.k[layer][:, :end], self.v[layer][:, :end]

    def advance(self, n: int) -> None:
        """Move the position past `n` tokens whose K/V every layer has written (the model calls this)."""
        self.pos += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (indices), e.g. to drop sequences that have finished."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
