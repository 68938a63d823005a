"""Hamner: a fast trainer for small Llama-style language models.

The model and its presets live here; generation is in `hamner.generate`. Importing `hamner`
stays light (no data-layer imports).
"""
from hamner.config import PRESETS, HamnerConfig, model_config
from hamner.model import HamnerModel

__all__ = ["PRESETS", "HamnerConfig", "HamnerModel", "model_config"]
