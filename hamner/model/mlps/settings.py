"""The settings check of the MoE MLP, without torch (see `hamner.model.mixers.settings` for why a class apart)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hamner.errors import ConfigError
from hamner.model.checks import number, positive_int

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


class MoESettings:
    """The mixture of experts reads `n_experts`, `moe_top_k`, `moe_intermediate_size` and its loss weights."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """Expert counts and width are positive integers, top-k at most the experts, loss weights numbers >= 0."""
        for name in ("n_experts", "moe_top_k"):
            if not positive_int(getattr(config, name)):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(config, name)!r}")
        if config.moe_top_k > config.n_experts:
            raise ConfigError(f"moe_top_k ({config.moe_top_k}) must not exceed n_experts ({config.n_experts})")
        if config.moe_intermediate_size is not None and not positive_int(config.moe_intermediate_size):
            raise ConfigError(f"moe_intermediate_size must be a positive integer, got {config.moe_intermediate_size!r}")
        for name in ("moe_balance_weight", "moe_z_weight"):
            value = getattr(config, name)
            if not number(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


GELU_APPROXIMATIONS = ("tanh", "none")


class GELUSettings:
    """The GELU MLP reads `gelu_approximate`: "tanh" (GPT-2's) or "none" (the exact erf form)."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """`gelu_approximate` is one of GELU_APPROXIMATIONS."""
        if config.gelu_approximate not in GELU_APPROXIMATIONS:
            raise ConfigError(f"gelu_approximate must be one of {', '.join(map(repr, GELU_APPROXIMATIONS))} for the "
                             f"gelu MLP, got {config.gelu_approximate!r}")
