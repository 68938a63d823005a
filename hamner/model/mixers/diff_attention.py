"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv 2410.05258).

Each head splits its query and key into two halves and takes the difference of their softmax maps:

    DiffAttn(X) = (softmax(Q1 K1^T / sqrt(d)) - lambda * softmax(Q2 K2^T / sqrt(d))) V
    lambda      = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init
    lambda_init = 0.8 - 0.6 exp(-0.3 l)          (l = 0-based layer index, as the authors' code)
    y_h         = (1 - lambda_init) * RMSNorm(DiffAttn_h)

With H/2 heads of query/key width 2 x d and value width 2d (d = hidden / H), the projections have
exactly the shapes of the dense attention with H heads, so parameter counts match (plus 4d for
the lambda vectors and 2d for the shared per-head norm). Component j of head h reads component j
of KV head h // (heads per KV head), RoPE applied to every d-wide component.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from hamner import kernels
from hamner.model.mixers.settings import DifferentialAttentionSettings
from hamner.model.mixers.shared import KVState

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


def lambda_init(layer_index: int) -> float:
    """The depth-dependent initial lambda, 0.8 - 0.6 exp(-0.3 l) for 0-based layer l."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class DifferentialAttention(DifferentialAttentionSettings, nn.Module):
    """Differential attention with the dense attention's projection shapes (`qkv`, `out`)."""

    keeps_documents_apart = False
    mixes_documents_because = "its attention kernel takes no document mask"

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads // 2, config.n_kv_heads // 2
        self.head_dim = config.head_dim  # width d of one component; values are 2d wide
        self.norm_eps = config.norm_eps
        self.lambda_init = lambda_init(layer_index)
        q_dim, kv_dim = config.n_heads * self.head_dim, config.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, q_dim + 2 * kv_dim, bias=False)  # rows: q, k, v
        self.out = nn.Linear(q_dim, config.hidden_size, bias=False)
        self.lambda_q1 = nn.Parameter(torch.empty(self.head_dim))
        self.lambda_k1 = nn.Parameter(torch.empty(self.head_dim))
        self.lambda_q2 = nn.Parameter(torch.empty(self.head_dim))
        self.lambda_k2 = nn.Parameter(torch.empty(self.head_dim))
        self.head_norm = nn.Parameter(torch.empty(2 * self.head_dim))  # RMSNorm weight, shared by heads
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Lambda vectors N(0, 0.1) as in the paper's code; the head norm weight ones."""
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        nn.init.ones_(self.head_norm)

    def lam(self) -> torch.Tensor:
        """The scalar lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, in float32."""
        return (torch.exp((self.lambda_q1.float() * self.lambda_k1.float()).sum())
                - torch.exp((self.lambda_q2.float() * self.lambda_k2.float()).sum()) + self.lambda_init)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: KVState | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        d = self.head_dim
        q_dim, kv_dim = 2 * self.n_heads * d, 2 * self.n_kv_heads * d
        q, k, v = self.qkv(x).split((q_dim, kv_dim, kv_dim), dim=-1)
        # Components are the outer axis: q[:, :, j] are the j-th halves of every head.
        q, k = q.view(B, T, 2 * self.n_heads, d), k.view(B, T, 2 * self.n_kv_heads, d)
        q, k = kernels.apply_rope(q, k, cos, sin)
        k, v = k.view(B, T, 2, self.n_kv_heads, d), v.view(B, T, self.n_kv_heads, 2 * d)
        if state is not None:
            k, v = state.append(k, v)
        y = kernels.differential_attention(q.view(B, T, 2, self.n_heads, d), k, v, self.lam(), causal=True)
        y = kernels.rms_norm(y, self.head_norm, self.norm_eps) * (1.0 - self.lambda_init)
        return self.out(y.reshape(B, T, C))

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVState:
        return KVState.empty(batch_size, max_len, (2, self.n_kv_heads, self.head_dim),
                             (self.n_kv_heads, 2 * self.head_dim), None, device, dtype)
