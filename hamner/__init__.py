"""Hamner: a fast trainer for small Llama-style language models.

The model and its presets live here; generation is in `hamner.use.generate`. Importing `hamner`
stays light: no data-layer imports, and torch only once `HamnerModel` is used, so torch-free
modules such as `hamner.train.curriculum.controller` and `hamner.run.plot` start fast.
"""
from typing import Any

from hamner.model.config import PRESETS, HamnerConfig, model_config


def __getattr__(name: str) -> Any:
    if name == "HamnerModel":
        from hamner.model.transformer import HamnerModel

        return HamnerModel
    raise AttributeError(f"module 'hamner' has no attribute {name!r}")


__all__ = ["PRESETS", "HamnerConfig", "HamnerModel", "model_config"]
