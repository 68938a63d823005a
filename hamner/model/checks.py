"""What config checks share: value tests, and the `ConfigCheck` protocol of the mixers' and MLPs' own checks.

Torch-free, so that `HamnerConfig` (presets included) is checked without importing torch.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


def positive_int(value: object) -> bool:
    """Whether `value` is an int >= 1 (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def number(value: object) -> bool:
    """Whether `value` is a finite int or float (a bool, inf and nan are not): a setting of inf or nan
    only shows up later as a model that trains to nan."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ConfigCheck(Protocol):
    """A part of the block that checks the config fields it reads."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """ValueError (one line naming the field) unless `config` holds settings this part accepts."""
        ...


class NoSettings:
    """For a part that reads only the shape every block has (hidden size, heads, ...), which the config checks."""

    @classmethod
    def check_config(cls, config: HamnerConfig) -> None:
        """Nothing to check."""
