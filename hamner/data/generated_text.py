"""Row source over a procedural text generator: sample i is generate(Random seeded by (seed, i)),
tokenized in batches and packed back to back, each sample followed by end-of-text.

Shared by the built-in story (data/stories.py) and chat (data/chat_gen.py) generators.
`masked_rows` also gives the loss masks of data.loss_masks (a chat's replies; all of a story).
"""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from hamner.data.loss_masks import tokens_and_masks


def sample_rng(seed: int, i: int) -> random.Random:
    """The generator of sample i of the stream with this seed (string seeding is stable across runs)."""
    return random.Random(f"{int(seed)}:{i}")


class GeneratedTextSource:
    """A RowSource of generated documents; `difficulty` is accepted for the protocol and ignored."""

    name = "generated"
    _BATCH = 32  # documents generated and tokenized at a time

    def __init__(self, tokenizer, generate: Callable[[random.Random], str]) -> None:
        self.tokenizer = tokenizer
        self._generate = generate

    def texts(self, n: int, seed: int, start: int = 0) -> list[str]:
        """Documents start .. start+n-1 of the stream with this seed."""
        return [self._generate(sample_rng(seed, i)) for i in range(start, start + n)]

    def rows(self, n_rows: int, row_len: int, seed: int, difficulty: float = 1.0) -> np.ndarray:
        """[n_rows, row_len] int32: documents 0, 1, ... each followed by end-of-text, packed back to back."""
        return self._pack(n_rows, row_len, seed, masks=False)[0]

    def masked_rows(self, n_rows: int, row_len: int, seed: int,
                    difficulty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """`rows` and their uint8 loss masks."""
        return self._pack(n_rows, row_len, seed, masks=True)

    def _pack(self, n_rows: int, row_len: int, seed: int, masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if n_rows < 0 or row_len < 1:
            raise ValueError(f"rows needs n_rows >= 0 and row_len >= 1, got {n_rows} x {row_len}")
        need = n_rows * row_len
        out = np.empty(need, np.int32)
        mask_out = np.empty(need, np.uint8) if masks else None
        pos, i = 0, 0
        while pos < need:
            texts = self.texts(self._BATCH, seed, i)
            if masks:
                docs = tokens_and_masks(self.tokenizer, texts)
            else:
                docs = [(ids + [self.tokenizer.eos_id], None) for ids in self.tokenizer.encode_batch(texts)]
            for ids, mask in docs:
                take = min(len(ids), need - pos)
                out[pos : pos + take] = ids[:take]
                if masks:
                    mask_out[pos : pos + take] = mask[:take]
                pos += take
                if pos == need:
                    break
            i += self._BATCH
        return out.reshape(n_rows, row_len), None if mask_out is None else mask_out.reshape(n_rows, row_len)
