"""Causal grouped-query softmax attention with RoPE, full or over a sliding window.

    y_t = sum_{s in S_t} softmax_s(q_t . k_s / sqrt(D)) v_s,   S_t = {0..t} (full) or {t-W+1..t} (window W)

The Llama attention (Touvron et al. 2023, "LLaMA"); the sliding window as in Beltagy et al. 2020
("Longformer") and Mistral 7B (Jiang et al. 2023). Decoding keeps the keys and values seen so far:
all of them for full attention, only the last W - 1 (all a new query still sees besides its own)
for the window, so the window's cache stays bounded however long the text.

RoPE pairs element i of a head with element i + D/2 (Llama's rotate-half, which the stored weights
and the Hugging Face export follow). The forward projects q and k with each head's rows reordered
to (0, D/2, 1, D/2 + 1, ...), which puts every pair side by side: RoPE is then one complex multiply,
one pass over q and k instead of three on a CPU. Scores are dot products within a head, unchanged
(up to rounding) when q and k are reordered alike, so the output is the rotate-half attention's;
the decoding cache holds the reordered keys.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from hamner import kernels

if TYPE_CHECKING:
    from hamner.config import HamnerConfig


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


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE; q, k, v come from one fused projection."""

    keeps_documents_apart = True

    def __init__(self, config: HamnerConfig, layer_index: int, window: int | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.window = window
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, q_dim + 2 * kv_dim, bias=False)  # rows: q, k, v
        self.out = nn.Linear(q_dim, config.hidden_size, bias=False)
        self._pair_major: dict[torch.device, torch.Tensor] = {}  # device -> row order, see pair_major_rows

    def pair_major_rows(self, device: torch.device) -> torch.Tensor:
        """Row order of `qkv.weight` that puts each q and k head's RoPE pairs (i, i + D/2) side by side;
        v rows keep their order."""
        if device not in self._pair_major:
            half, rotated = self.head_dim // 2, self.n_heads + self.n_kv_heads
            zipped = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).reshape(-1)
            qk = (torch.arange(rotated)[:, None] * self.head_dim + zipped).reshape(-1)
            v = torch.arange(rotated * self.head_dim, self.qkv.out_features)
            self._pair_major[device] = torch.cat((qk, v)).to(device)
        return self._pair_major[device]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: KVState | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        weight = self.qkv.weight.index_select(0, self.pair_major_rows(x.device))
        q, k, v = F.linear(x, weight).split((q_dim, kv_dim, kv_dim), dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if cos.dim() == 3:  # a position per token ([B, T, D/2]): rotate the B x T tokens as one sequence
            q, k = kernels.apply_rope(q.reshape(1, B * T, self.n_heads, self.head_dim),
                                      k.reshape(1, B * T, self.n_kv_heads, self.head_dim),
                                      cos.reshape(B * T, -1), sin.reshape(B * T, -1), interleaved=True)
            q, k = q.view(B, T, self.n_heads, self.head_dim), k.view(B, T, self.n_kv_heads, self.head_dim)
        else:
            q, k = kernels.apply_rope(q, k, cos, sin, interleaved=True)
        if state is not None:
            k, v = state.append(k, v)
        # Queries are the last T positions of the keys.
        y = kernels.attention(q, k, v, causal=True, window=self.window, segment_ids=segment_ids)
        return self.out(y.reshape(B, T, q_dim))

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVState:
        head = (self.n_kv_heads, self.head_dim)
        return KVState.empty(batch_size, max_len, head, head, self.window, device, dtype)


class SlidingWindowAttention(Attention):
    """Attention where each query sees only the last `config.window` keys, itself included."""

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__(config, layer_index, window=config.window)
