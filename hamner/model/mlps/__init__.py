"""The MLPs a block can use after its token mixer, by name (`MLPS`); the contract is `MLP` below.

The MLP of layer i sits at `layers.{i}.mlp`; `hamner.model.transformer.build_mlp` builds it. Classes are
imported on lookup and their settings checks are torch-free (`hamner.model.mlps.settings`), so `import hamner`
stays free of torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hamner.model.checks import ConfigCheck, NoSettings
from hamner.model.mlps.settings import GELUSettings, MoESettings
from hamner.model.registry import LazyRegistry

if TYPE_CHECKING:
    import torch

    from hamner.model.config import HamnerConfig


@runtime_checkable
class MLP(ConfigCheck, Protocol):
    """An MLP: an `nn.Module` built as `cls(config, layer_index)` (settings: `check_config`).

    Like a mixer (`hamner.model.mixers.Mixer`) it may define `init_weights()` for parameters the model's
    generic init does not cover and set `aux_loss` in training forwards.
    """

    def __init__(self, config: HamnerConfig, layer_index: int) -> None: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, C], each position on its own."""
        ...


MLPS = LazyRegistry({
    "swiglu": ("hamner.model.mlps.swiglu:SwiGLU", NoSettings),
    "moe": ("hamner.model.mlps.moe:MoE", MoESettings),
    "gelu": ("hamner.model.mlps.gelu:GELUMLP", GELUSettings),
    "relu2": ("hamner.model.mlps.relu2:ReLU2MLP", NoSettings),
})
