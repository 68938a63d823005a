"""Memory-mapped shard reading: a split viewed as non-overlapping windows of row_len tokens.

The split's shards are one token stream cut into windows; epoch e visits them in a permutation
seeded by (seed, e). Position p of the stream is window perm_e[p mod n] with e = p div n, so a
reader that keeps a cursor (the mixture sampler) reads every window exactly once per epoch, and
consecutive ranges of positions handed to different ranks never overlap. Loss masks (the
shards' sidecars, see data.shards) are read through the same windows.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hamner.data.shards import check_source_dir, largest_token_id, mask_path, read_mask, read_shard, shard_paths
from hamner.errors import DataError


class ShardSource:
    """All shards of one split of a prepared source directory, memory-mapped.

    Given the tokenizer, every shard's largest token id is checked against its vocabulary when the
    source opens, so a foreign or corrupt shard stops a run before it starts, not inside the embedding."""

    def __init__(self, directory: str | os.PathLike, split: str = "train", tokenizer=None) -> None:
        directory = Path(directory)
        self.meta = check_source_dir(directory, tokenizer)
        self.name = directory.name
        self.split = split
        paths = shard_paths(directory, split)
        if not paths:
            raise DataError(f"{directory} has no {split} shards ({split}_000000.bin, ...)")
        self.shards = [read_shard(p) for p in paths]
        if tokenizer is not None:
            for path, tokens in zip(paths, self.shards):
                largest = largest_token_id(path, tokens, self.meta)
                if largest >= tokenizer.vocab_size:
                    raise DataError(f"shard {path} holds token id {largest}, outside the vocabulary of "
                                    f"{tokenizer.name!r} ({tokenizer.vocab_size} ids): it was made with another "
                                    "tokenizer or is corrupt")
        self.masks = [read_mask(p, s.size) for p, s in zip(paths, self.shards)]  # None: every token counts
        self._check_masks(directory, paths)
        self.starts = np.cumsum([0] + [s.size for s in self.shards])
        self.tokens = int(self.starts[-1])
        self._perms: dict[tuple[int, int, int], np.ndarray] = {}

    def _check_masks(self, directory: Path, paths: list[Path]) -> None:
        """Refuse loss masks that cannot be what prepare wrote: a sidecar meta.json lists but that is missing,
        values other than 0 and 1, or masks that leave no token of the split counted (chats with no reply)."""
        listed = set(((self.meta or {}).get("loss_masks") or {}).get(self.split) or [])
        for path, mask in zip(paths, self.masks):
            if mask is None and mask_path(path).name in listed:
                raise DataError(f"{directory}/meta.json lists loss mask {mask_path(path).name}, which is missing; "
                                "prepare the source again")
            if mask is not None and mask.size and int(mask.max()) > 1:
                raise DataError(f"loss mask {mask_path(path)} holds the value {int(mask.max())}; masks hold only 0 "
                                "and 1 (prepare the source again)")
        if all(mask is not None and not mask.any() for mask in self.masks):
            raise DataError(f"{self.name} {self.split} split has no counted tokens: its loss masks are all 0 (chats "
                            "without an assistant reply?), so it cannot be trained or validated on")

    def num_windows(self, row_len: int) -> int:
        """How many non-overlapping windows of `row_len` tokens the split holds."""
        n = self.tokens // row_len
        if n == 0:
            raise DataError(
                f"{self.name} {self.split} split has {self.tokens:,} tokens, fewer than one row of {row_len}"
            )
        return n

    def rows(self, n_rows: int, row_len: int, seed: int, difficulty: float = 0.0) -> np.ndarray:
        """The first `n_rows` windows of the stream seeded by `seed` (distinct while n_rows <= num_windows)."""
        return self.windows(np.arange(n_rows), row_len, seed)

    def windows(self, positions: np.ndarray, row_len: int, seed: int) -> np.ndarray:
        """[len(positions), row_len] int32: window perm_e[p mod n] of epoch e = p div n for each position p."""
        out = np.empty((len(positions), row_len), dtype=np.int32)
        for r, start in enumerate(self._starts(positions, row_len, seed)):
            self._read(self.shards, start, out[r])
        return out

    def masked_rows(self, n_rows: int, row_len: int, seed: int,
                    difficulty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """`rows` and their uint8 loss masks."""
        return self.masked_windows(np.arange(n_rows), row_len, seed)

    def masked_windows(self, positions: np.ndarray, row_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`windows` and their uint8 loss masks (1 where a token counts; all 1 in shards without a sidecar)."""
        masks = np.empty((len(positions), row_len), dtype=np.uint8)
        for r, start in enumerate(self._starts(positions, row_len, seed)):
            self._read(self.masks, start, masks[r])
        return self.windows(positions, row_len, seed), masks

    def _starts(self, positions: np.ndarray, row_len: int, seed: int) -> np.ndarray:
        """Stream offsets of the windows at these positions."""
        positions = np.asarray(positions, dtype=np.int64)
        n = self.num_windows(row_len)
        epochs, within = np.divmod(positions, n)
        index = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            index[sel] = self._permutation(seed, int(e), row_len)[within[sel]]
        return index * row_len

    def _permutation(self, seed: int, epoch: int, row_len: int) -> np.ndarray:
        key = (seed, epoch, row_len)
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) >= 4:
                self._perms.pop(next(iter(self._perms)))
            perm = np.random.default_rng([seed, epoch]).permutation(self.num_windows(row_len))
            self._perms[key] = perm
        return perm

    def _read(self, arrays: list[np.ndarray | None], start: int, out: np.ndarray) -> None:
        """Copy entries [start, start + len(out)) of the split's stream of `arrays` (per shard: tokens
        or masks; None reads as 1) into `out` (may span shards)."""
        start = int(start)
        done = 0
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while done < out.size:
            offset = start + done - int(self.starts[k])
            n = min(int(self.starts[k + 1]) - int(self.starts[k]) - offset, out.size - done)
            out[done : done + n] = 1 if arrays[k] is None else arrays[k][offset : offset + n]
            done += n
            k += 1

    def __repr__(self) -> str:
        return f"ShardSource({self.name!r}, split={self.split!r}, tokens={self.tokens:,}, shards={len(self.shards)})"
