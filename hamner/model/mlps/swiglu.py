"""The Llama feed-forward: y = down(silu(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer")."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from hamner import kernels
from hamner.model.checks import NoSettings

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


class SwiGLU(NoSettings, nn.Module):
    """SwiGLU feed-forward with gate and up fused in one projection (`gate_up`), then `down`."""

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)  # rows: gate, up
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(kernels.swiglu(self.gate_up(x)))
