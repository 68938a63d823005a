"""Hebbian fast-weight memory (the AGIFORMER memory): decayed linear attention, normalised.

Per head, with the feature map phi(x) = elu(x) + 1 on queries and keys,

    M_t = lam M_{t-1} + phi(k_t) v_tᵀ        z_t = lam z_{t-1} + phi(k_t)
    o_t = phi(q_t)ᵀ M_t / (phi(q_t)ᵀ z_t + eps)

with the per-head decay lam = alpha (0.99 + 0.01 sigmoid(theta)): theta is learnt, the plasticity
alpha is a buffer (checkpoints carry it) that a curriculum sets per stage through the model knob
"plasticity". A linear-attention memory as in Katharopoulos et al. 2020 ("Transformers are RNNs")
with the decay of retention/GLA-style models (Sun et al. 2023, Yang et al. 2024).

The memory is an fp32 island: whatever the autocast dtype, it is computed in float32 (half
precision overflowed in the original project). It runs as `kernels.decayed_linear_attention` in
its chunked form, which never inverts a decay, so it cannot overflow at any plasticity; the
normaliser z is the same op's last output column, its value being a column of ones. Decoding
keeps (M, z) as the state: a few kilobytes per head whatever the length.

Around the recurrence, AGIFORMER's memory block (its src/models/memory.py) gives the q/k/v and output
projections biases and ends in a LayerNorm of the projected output, norm(out(y)); `hebbian_bias` and
`hebbian_out_norm` turn these on (the agiformer-31m preset does), off by default.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from hamner import kernels
from hamner.errors import CurriculumError
from hamner.model.mixers.settings import HebbianSettings
from hamner.model.mixers.shared import island_dtype

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig

# Keeps o_t finite where phi(q_t)ᵀ z_t is tiny (phi > 0, so it is never negative).
NORMALISER_EPS = 1e-6


class HebbianState:
    """Decoding state: memory and normaliser, [B, H, D, D + 1], at least float32 (z: the last column)."""

    def __init__(self, memory: torch.Tensor) -> None:
        self.memory = memory

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows`."""
        self.memory = self.memory[rows]


class HebbianMemory(HebbianSettings, nn.Module):
    """The fast-weight memory mixer (module docstring); knob: "plasticity" (alpha, in (0, 1])."""

    keeps_documents_apart = False
    mixes_documents_because = "its memory runs across document boundaries"

    KNOBS = ("plasticity",)

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        inner = self.n_heads * self.head_dim
        self.initial_plasticity = config.hebbian_plasticity
        self.qkv = nn.Linear(config.hidden_size, 3 * inner, bias=config.hebbian_bias)  # rows: q, k, v
        self.out = nn.Linear(inner, config.hidden_size, bias=config.hebbian_bias)
        self.out_norm = nn.LayerNorm(config.hidden_size) if config.hebbian_out_norm else None
        self.decay_logit = nn.Parameter(torch.zeros(self.n_heads))  # theta
        self.register_buffer("plasticity", torch.tensor(float(config.hebbian_plasticity)))

    @torch.no_grad()
    def init_weights(self) -> None:
        """theta = 0 (decay alpha * 0.995), the configured plasticity, zero biases and a unit output norm;
        the Linears' weights are the model's."""
        self.decay_logit.zero_()
        self.plasticity.fill_(self.initial_plasticity)
        for bias in (self.qkv.bias, self.out.bias):
            if bias is not None:
                bias.zero_()
        if self.out_norm is not None:
            self.out_norm.reset_parameters()

    def check_knob(self, name: str, value: float) -> None:
        """ValueError unless `name` is "plasticity" and `value` lies in (0, 1]."""
        if name not in self.KNOBS:
            raise CurriculumError(f"unknown knob {name!r} for the Hebbian memory (knobs: {', '.join(self.KNOBS)})")
        if not 0 < value <= 1:
            raise CurriculumError(f"plasticity must be in (0, 1], got {value!r}")

    def set_knob(self, name: str, value: float) -> None:
        """Set the knob `name` ("plasticity": alpha in (0, 1])."""
        self.check_knob(name, value)
        self.plasticity.fill_(value)

    def log_decay(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """log lam per head [H]: log alpha + log(0.99 + 0.01 sigmoid(theta)), both terms <= 0."""
        theta = self.decay_logit.to(dtype)
        return self.plasticity.to(dtype).log() + torch.log(0.99 + 0.01 * torch.sigmoid(theta))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: HebbianState | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(2)
        dtype = island_dtype(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            q, k = F.elu(q.to(dtype)) + 1.0, F.elu(k.to(dtype)) + 1.0
            v_and_ones = torch.cat((v.to(dtype), v.new_ones(B, T, H, 1, dtype=dtype)), dim=-1)
            log_decay = self.log_decay(dtype).expand(B, T, H)
            initial = None if state is None else state.memory
            o, final = kernels.decayed_linear_attention(q, k, v_and_ones, log_decay, initial)
            y = o[..., :D] / (o[..., D:] + NORMALISER_EPS)
        if state is not None:
            state.memory = final
        out = self.out(y.to(x.dtype).reshape(B, T, H * D))
        return out if self.out_norm is None else self.out_norm(out)

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> HebbianState:
        """Empty memory and normaliser, at least float32 whatever `dtype` (the memory is an fp32 island)."""
        return HebbianState(torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim + 1,
                                        device=device, dtype=island_dtype(dtype)))
