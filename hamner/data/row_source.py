"""The contract every source of training rows implements (shards, synthetic tasks, built-in text).

`rows` is a pure function of its arguments, so any batch can be rebuilt from (seed, step).
Shard sources also implement `CursorSource`: the mixture sampler addresses their windows by a
running position, so a run reads every window once per epoch and never repeats or skips data
on resume. Sources that know which tokens a loss should count (chat replies) also implement
`MaskedRowSource`: the same rows with uint8 masks, 1 where a token counts as a target.
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


@runtime_checkable
class MaskedRowSource(RowSource, Protocol):
    def masked_rows(self, n_rows: int, row_len: int, seed: int, difficulty: float) -> tuple[np.ndarray, np.ndarray]:
        """`rows(...)` and a uint8 mask of the same shape, 1 where the token counts as a target."""
        ...


@runtime_checkable
class MaskedCursorSource(CursorSource, MaskedRowSource, Protocol):
    def masked_windows(self, positions: np.ndarray, row_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`windows(...)` and their uint8 masks."""
        ...
