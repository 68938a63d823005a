"""The ReLU² feed-forward: y = W_down relu(W_up x)^2, W_up [I, C], W_down [C, I], no gate, no biases.

Primer's squared ReLU (So et al. 2021, "Primer: Searching for Efficient Transformers for Language
Modeling"), the MLP of the modded-nanogpt speedrun (Keller Jordan et al. 2024: c_fc, relu().square(),
c_proj). Two projections where SwiGLU has three, so at one `intermediate_size` it holds 2/3 of SwiGLU's
MLP parameters (the speedrun uses I = 4C). The activation is one fused kernel (`kernels.relu2`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from hamner import kernels
from hamner.model.checks import NoSettings

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


class ReLU2MLP(NoSettings, nn.Module):
    """`up` [I, C] and `down` [C, I] without biases, relu(.)^2 between them; the model's init sets the weights."""

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(kernels.relu2(self.up(x)))
