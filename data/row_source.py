"""The contract every source of training rows implements (shards, synthetic tasks, built-in text).

`rows` is a pure function of its arguments, so any batch can be rebuilt from (seed, step).
Shard sources also implement `CursorSource`: the mixture sampler addresses their windows by a
running position, so a run reads every window once per epoch and never repeats or skips data
on resume.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RowSource(Protocol):
    name: str

    def rows(self, n_rows: int, row_len: int, seed: int, difficulty: float) -> np.ndarray:
        """[n_rows, row_len] int32 token ids, a pure function of the arguments."""
        ...


@runtime_checkable
class CursorSource(RowSource, Protocol):
    def windows(self, positions: np.ndarray, row_len: int, seed: int) -> np.ndarray:
        """[len(positions), row_len] int32: the windows at these positions of the seeded, epoch-shuffled stream."""
        ...
