"""Several token mixers side by side: y = sum_m mixer_m(x), every mixer reading the same normed x.

The AGIFORMER block, for one, runs sliding-window attention and a fast-weight memory this way.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hamner.model.mixers import DecodingState


class ParallelState:
    """The decoding states of the mixers of one `ParallelMixers`, in the same order."""

    def __init__(self, states: list[DecodingState]) -> None:
        self.states = states

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` in every mixer's state."""
        for state in self.states:
            state.select(rows)


class ParallelMixers(nn.ModuleDict):
    """Mixers keyed by their registry name; the output is the sum of theirs (`forward`, `new_state` as a `Mixer`'s)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: ParallelState | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        states = [None] * len(self) if state is None else state.states
        out = None
        for mixer, mixer_state in zip(self.values(), states):
            y = mixer(x, cos, sin, mixer_state, segment_ids=segment_ids)
            out = y if out is None else out + y
        return out

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> ParallelState:
        return ParallelState([m.new_state(batch_size, max_len, device, dtype) for m in self.values()])
