"""The GPT-2 feed-forward: y = W_down gelu(W_up x + b_up) + b_down, W_up [I, C], W_down [C, I] (I = 4C in GPT-2).

gelu is the tanh approximation GPT-2 trained with ("gelu_new" in Hugging Face transformers),

    gelu(u) = 0.5 u (1 + tanh(sqrt(2 / pi) (u + 0.044715 u^3)))

(Hendrycks & Gimpel 2016, "Gaussian Error Linear Units"; Radford et al. 2019, GPT-2's `mlp`: c_fc, gelu, c_proj,
both projections with biases), or the exact u Phi(u) with `gelu_approximate = "none"` (nanoGPT's nn.GELU()).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from hamner import kernels
from hamner.model.mlps.settings import GELUSettings

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


class GELUMLP(GELUSettings, nn.Module):
    """`up` [I, C] and `down` [C, I] with biases, GELU between them; the model's init sets the weights."""

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.approximate = config.gelu_approximate
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Zero biases, as GPT-2 and nanoGPT start them (the weights are the model's N(0, init_std))."""
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(kernels.gelu(self.up(x), self.approximate))
