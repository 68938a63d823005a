"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States"): a token mixer whose hidden state is a linear model trained while it reads.

Per head, an inner model f(x) = x + LN(x W + b) learns to map keys to values: each token j
brings the loss 1/2 |LN(k_j W + b) - (v_j - k_j)|², and every mini-batch of `ttt_mini_batch`
tokens takes one gradient step from the weights it started with. Token i of a mini-batch is read
out as z_i = f_i(q_i), f_i with the step over the mini-batch's tokens up to i, so the mixer is
causal. The inner learning rate is learnt and input dependent:
lr_j = ttt_base_lr * sigmoid(x_j w_h + b_h) / head_dim, times the position's scale
1/(i+1) + a learnt offset (clamped at 0). Queries and keys get RoPE by their position inside the
mini-batch, and the output goes through a LayerNorm and the output projection, as in the
authors' reference (test-time-training/ttt-lm-pytorch, Transformer backbone: no gate, no conv).

The inner loop is `kernels.ttt_linear` (the dual form) and is an fp32 island. Decoding keeps
the inner weights W, b of the last complete mini-batch and the keys, values and learning rates of
the partial one; each call finishes that mini-batch from them, with the same arithmetic as a
full-sequence pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from hamner import kernels
from hamner.model.mixers.settings import TTTLinearSettings
from hamner.model.mixers.shared import island_dtype

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig

INNER_NORM_EPS = 1e-6


class TTTState:
    """Decoding state, at least float32: inner weights [B, H, D, D], bias [B, H, D] after the last complete
    mini-batch, and k, v [B, n, H, D], lr [B, n, H] of the n < mini-batch tokens read since."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 lr: torch.Tensor) -> None:
        self.weight, self.bias, self.k, self.v, self.lr = weight, bias, k, v, lr

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows`."""
        self.weight, self.bias = self.weight[rows], self.bias[rows]
        self.k, self.v, self.lr = self.k[rows], self.v[rows], self.lr[rows]


class TTTLinear(TTTLinearSettings, nn.Module):
    """The TTT-Linear mixer (module docstring)."""

    keeps_documents_apart = False
    mixes_documents_because = "its inner model keeps learning across document boundaries"

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.mini_batch, self.base_lr, self.rope_theta = config.ttt_mini_batch, config.ttt_base_lr, config.rope_theta
        self.init_std = config.init_std
        H, D, C = self.n_heads, self.head_dim, config.hidden_size
        self.qkv = nn.Linear(C, 3 * H * D, bias=False)  # rows: q, k, v
        self.lr_gate = nn.Linear(C, H)  # per-head inner learning-rate gate
        self.token_scale_offset = nn.Parameter(torch.empty(self.mini_batch))
        self.inner_weight = nn.Parameter(torch.empty(H, D, D))
        self.inner_bias = nn.Parameter(torch.empty(H, D))
        self.inner_norm_weight = nn.Parameter(torch.empty(H, D))
        self.inner_norm_bias = nn.Parameter(torch.empty(H, D))
        self.post_norm = nn.LayerNorm(H * D, eps=INNER_NORM_EPS)
        self.out = nn.Linear(H * D, C, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """As the reference: W ~ N(0, init_std), b = 0, inner LayerNorm identity, gate bias 0,
        position-scale offsets 0 (so the scale starts at 1/(i+1)), post-norm identity."""
        nn.init.normal_(self.inner_weight, std=self.init_std)
        self.inner_bias.zero_()
        self.inner_norm_weight.fill_(1.0)
        self.inner_norm_bias.zero_()
        self.token_scale_offset.zero_()
        self.lr_gate.bias.zero_()
        self.post_norm.reset_parameters()

    def _token_scale(self, dtype: torch.dtype) -> torch.Tensor:
        """Scale of the step at each mini-batch position i: 1/(i+1) + a learnt offset, at least 0."""
        positions = torch.arange(1, self.mini_batch + 1, device=self.token_scale_offset.device, dtype=dtype)
        return (1.0 / positions + self.token_scale_offset.to(dtype)).clamp_min(0.0)

    def _rope_in_mini_batch(self, q: torch.Tensor, k: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE at each token's position inside its mini-batch; token 0 of x is at position `first`."""
        cos, sin = kernels.rope_cache(self.mini_batch, self.head_dim, self.rope_theta, device=q.device)
        rows = (first + torch.arange(q.shape[1], device=q.device)) % self.mini_batch
        return kernels.apply_rope(q, k, cos[rows], sin[rows])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: TTTState | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(2)
        dtype = island_dtype(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            pending = 0 if state is None else state.k.shape[1]
            q, k = self._rope_in_mini_batch(q.to(dtype), k.to(dtype), pending)
            v = v.to(dtype)
            gate = F.linear(x.to(dtype), self.lr_gate.weight.to(dtype), self.lr_gate.bias.to(dtype))
            lr = self.base_lr * torch.sigmoid(gate) / D  # [B, T, H]
            if state is None:
                weight = self.inner_weight.to(dtype).expand(B, H, D, D)
                bias = self.inner_bias.to(dtype).expand(B, H, D)
            else:  # finish the partial mini-batch: its tokens go first, their outputs are dropped
                weight, bias = state.weight, state.bias
                q = torch.cat((q.new_zeros(B, pending, H, D), q), dim=1)
                k, v, lr = (torch.cat(pair, dim=1) for pair in ((state.k, k), (state.v, v), (state.lr, lr)))
            z, weight, bias = kernels.ttt_linear(q, k, v, lr, self._token_scale(dtype), weight, bias,
                                                 self.inner_norm_weight.to(dtype), self.inner_norm_bias.to(dtype),
                                                 INNER_NORM_EPS)
            if state is not None:
                done = (pending + T) // self.mini_batch * self.mini_batch
                state.weight, state.bias = weight, bias
                state.k, state.v, state.lr = k[:, done:], v[:, done:], lr[:, done:]
                z = z[:, pending:]
            y = F.layer_norm(z.reshape(B, T, H * D), (H * D,), self.post_norm.weight.to(dtype),
                             self.post_norm.bias.to(dtype), self.post_norm.eps)
        return self.out(y.to(x.dtype))

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> TTTState:
        """The untrained inner model and no pending tokens, at least float32 whatever `dtype` (fp32 island)."""
        H, D = self.n_heads, self.head_dim
        dtype = island_dtype(dtype)
        weight = self.inner_weight.detach().to(device, dtype).expand(batch_size, H, D, D).clone()
        bias = self.inner_bias.detach().to(device, dtype).expand(batch_size, H, D).clone()
        empty = torch.zeros(batch_size, 0, H, D, device=device, dtype=dtype)
        return TTTState(weight, bias, empty, empty.clone(), torch.zeros(batch_size, 0, H, device=device, dtype=dtype))
