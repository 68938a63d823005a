"""Pieces several mixers share: the keys-and-values decoding state and the dtype of fp32 islands.

Mixers never import one another; what two of them use lives here.
"""
from __future__ import annotations

import torch


def island_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an fp32 island computes in: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


class KVState:
    """Keys and values [B, T, H, D] a causal attention mixer has absorbed, for decoding.

    Unbounded (`window` None): buffers of `max_len` positions filled left to right. Bounded: the
    last `window - 1` keys and values only, kept as a sliding buffer.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> None:
        self.k, self.v = k, v  # preallocated [B, max_len, ...] (unbounded) or [B, 0, ...] (window)
        self.window = window
        self.length = 0  # tokens absorbed

    @classmethod
    def empty(cls, batch_size: int, max_len: int, k_head_shape: tuple[int, ...], v_head_shape: tuple[int, ...],
              window: int | None, device: torch.device, dtype: torch.dtype) -> KVState:
        """An empty state whose keys are [.., *k_head_shape] and values [.., *v_head_shape] per position."""
        room = max_len if window is None else 0
        k = torch.zeros(batch_size, room, *k_head_shape, device=device, dtype=dtype)
        v = torch.zeros(batch_size, room, *v_head_shape, device=device, dtype=dtype)
        return cls(k, v, window)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Absorb new k, v [B, T, ...]; return the keys and values the new queries attend over.

        Unbounded: every key so far. Window: the kept ones followed by the new ones.
        """
        n = k.shape[1]
        if self.window is not None:
            k_all, v_all = torch.cat((self.k, k), dim=1), torch.cat((self.v, v), dim=1)
            start = max(0, k_all.shape[1] - (self.window - 1))
            self.k, self.v = k_all[:, start:], v_all[:, start:]
            self.length += n
            return k_all, v_all
        end = self.length + n
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache overflow: {end} positions, room for {self.k.shape[1]}")
        self.k[:, self.length:end] = k
        self.v[:, self.length:end] = v
        self.length = end
        return self.k[:, :end], self.v[:, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows`."""
        self.k, self.v = self.k[rows], self.v[rows]
