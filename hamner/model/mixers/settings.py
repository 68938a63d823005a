"""The settings checks of the mixers that read config fields of their own, without torch.

Each class holds one mixer's `check_config`; the mixer inherits it (`SlidingWindowAttention.check_config`),
and `MIXERS.settings(name)` hands it to `HamnerConfig` without importing the mixer, so checking a config,
presets included, never imports torch. Errors are one line naming the field.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hamner.errors import ConfigError
from hamner.model.checks import number, positive_int

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


def refuse_qk_norm(config: HamnerConfig, mixer: str) -> None:
    """ConfigError when `qk_norm` is on: only attention and swa norm their queries and keys."""
    if config.qk_norm:
        raise ConfigError(f"qk_norm: the {mixer} mixer does not take it (only attention and swa do)")


class SlidingWindowSettings:
    """Sliding-window attention reads `window`."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """`window` is a positive integer."""
        if not positive_int(config.window):
            raise ConfigError(f"window must be a positive integer for the swa mixer, got {config.window!r}")


class DifferentialAttentionSettings:
    """Differential attention pairs the heads of the shape (no fields of its own)."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """`n_heads` and `n_kv_heads` are even; no qk_norm."""
        refuse_qk_norm(config, "diff_attention")
        if config.n_heads % 2 or config.n_kv_heads % 2:
            raise ConfigError(f"n_heads ({config.n_heads}) and n_kv_heads ({config.n_kv_heads}) must be even for "
                             "diff_attention (it pairs heads)")


class HebbianSettings:
    """The Hebbian memory reads `hebbian_plasticity`, `hebbian_learnt_plasticity`, `hebbian_out_norm` and
    `hebbian_bias`."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """`hebbian_plasticity` lies in (0, 1] (in (0, 1) when learnt: a sigmoid never reaches 1); the switches
        are true or false; no qk_norm."""
        refuse_qk_norm(config, "hebbian")
        if not (number(config.hebbian_plasticity) and 0 < config.hebbian_plasticity <= 1):
            raise ConfigError(f"hebbian_plasticity must be in (0, 1], got {config.hebbian_plasticity!r}")
        for name in ("hebbian_learnt_plasticity", "hebbian_out_norm", "hebbian_bias"):
            if not isinstance(getattr(config, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(config, name)!r}")
        if config.hebbian_learnt_plasticity and config.hebbian_plasticity == 1:
            raise ConfigError("a learnt plasticity (a sigmoid) starts below 1: set hebbian_plasticity below 1, "
                              "e.g. 0.99")


class TTTLinearSettings:
    """TTT-Linear reads `ttt_mini_batch` and `ttt_base_lr`."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """`ttt_mini_batch` is a positive integer, `ttt_base_lr` a positive number; no qk_norm."""
        refuse_qk_norm(config, "ttt_linear")
        if not positive_int(config.ttt_mini_batch):
            raise ConfigError(f"ttt_mini_batch must be a positive integer, got {config.ttt_mini_batch!r}")
        if not (number(config.ttt_base_lr) and config.ttt_base_lr > 0):
            raise ConfigError(f"ttt_base_lr must be positive, got {config.ttt_base_lr!r}")
