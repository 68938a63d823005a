"""The decoding cache: what cached decoding keeps for a batch, one decoding state per layer's mixer.

`HamnerModel.forward(..., cache=...)` feeds the new tokens through every layer's state and `hamner.use.generate`
drives it; it sits in its own module so the model and the generator can both use it without importing
each other.
"""
from __future__ import annotations

import torch

from hamner.model.mixers import DecodingState


class DecodingCache:
    """One decoding state per layer's mixer for a batch, and the position reached.

    On the model's device and in its dtype, for up to `max_len` (default: the model's context) positions.

    The states come from each mixer's `new_state` (attention: preallocated keys and values; sliding
    window: the last window - 1 of them; recurrent mixers: their state); `states[i]` is layer i's.
    `model` is a HamnerModel (typed loosely so this module need not import the model).
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, *, max_len: int | None = None) -> None:
        self.max_len = max_len or model.config.max_seq_len
        self.batch_size = batch_size
        self._model = model
        self.reset()

    def reset(self) -> None:
        """Forget everything cached: fresh, empty states for the current batch rows."""
        weight = self._model.embed.weight
        self.states: list[DecodingState] = [
            layer.attn.new_state(self.batch_size, self.max_len, weight.device, weight.dtype)
            for layer in self._model.layers]
        self.pos = 0

    def advance(self, n: int) -> None:
        """Move the position past `n` tokens that every layer has absorbed (the model calls this)."""
        self.pos += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (indices), e.g. to drop sequences that have finished."""
        for state in self.states:
            state.select(rows)
        self.batch_size = len(rows)
