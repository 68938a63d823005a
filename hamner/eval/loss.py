"""Validation loss, perplexity and bits per byte of a model on a token stream or a shard directory.

The stream is cut into consecutive, non-overlapping windows of `seq_len + 1` tokens (each
window's last token is the next window's first), so every scored token is predicted exactly
once, with the context of its own window. Bits per byte divides the total loss in bits by the
UTF-8 size of the scored text (the decoded targets, end-of-text tokens left out), which makes
models with different tokenizers comparable.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hamner.data.tokenizer import ByteTokenizer, Tokenizer
from hamner.data.windows import ShardSource
from hamner.errors import EvalError
from hamner.model.transformer import HamnerModel


def read_split(source_dir: str | Path, tokenizer: Tokenizer, split: str = "val",
               max_tokens: int | None = None) -> np.ndarray:
    """The first `max_tokens` tokens (all when None) of a source directory's split, shards concatenated.

    Refuses shards made with another tokenizer and a split with no shards (hamner.errors.DataError).
    """
    source = ShardSource(source_dir, split=split, tokenizer=tokenizer)
    wanted = source.tokens if max_tokens is None else min(max_tokens, source.tokens)
    parts, total = [], 0
    for shard in source.shards:
        parts.append(np.asarray(shard[: wanted - total], dtype=np.int64))
        total += len(parts[-1])
        if total >= wanted:
            break
    return np.concatenate(parts)


def utf8_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 size of the text of `ids` (any shape, read in order), end-of-text tokens left out."""
    kept = ids[ids != tokenizer.eos_id]
    return len(tokenizer.decode(kept.tolist()).encode("utf-8"))


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes of each token id's text (end-of-text: 0), so counting a batch's bytes is a lookup. Exact for
    the byte tokenizer; a token holding part of a character counts the bytes its own decoding gives."""
    if isinstance(tokenizer, ByteTokenizer):
        lengths = np.ones(tokenizer.vocab_size, dtype=np.int64)
    else:
        lengths = np.array([len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocab_size)])
    lengths[tokenizer.eos_id] = 0
    return lengths


@torch.no_grad()
def stream_loss(model: HamnerModel, tokens: np.ndarray, tokenizer: Tokenizer, *, seq_len: int | None = None,
                batch_size: int = 8) -> dict[str, float]:
    """loss (nats per token), perplexity, bits_per_byte, tokens, bytes and seq_len of `model` on `tokens`.

    Uses floor((len - 1) / seq_len) windows; seq_len defaults to the model's context and shrinks
    to the stream when the stream is shorter than one window. Raises ValueError under 2 tokens.
    """
    if len(tokens) < 2:
        raise EvalError(f"need at least 2 tokens to measure a loss, got {len(tokens)}")
    seq_len = min(seq_len or model.config.max_seq_len, len(tokens) - 1)
    n_windows = (len(tokens) - 1) // seq_len
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nats = 0.0
    for first in range(0, n_windows, batch_size):
        rows = range(first, min(first + batch_size, n_windows))
        batch = torch.from_numpy(np.stack([tokens[r * seq_len: (r + 1) * seq_len + 1] for r in rows])).to(device)
        loss = model(batch[:, :-1], batch[:, 1:])
        total_nats += float(loss) * batch[:, 1:].numel()
    model.train(was_training)
    n_tokens = n_windows * seq_len
    n_bytes = utf8_bytes(tokenizer, tokens[1: n_tokens + 1])
    mean = total_nats / n_tokens
    return {
        "loss": mean,
        "perplexity": math.exp(min(mean, 700.0)),
        "bits_per_byte": total_nats / math.log(2) / max(n_bytes, 1),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "seq_len": seq_len,
    }


def source_val_metrics(model: HamnerModel, source_dir: str | Path, tokenizer: Tokenizer, *,
                       max_tokens: int | None = 1_000_000, seq_len: int | None = None,
                       batch_size: int = 8) -> dict[str, float]:
    """`stream_loss` on the val split of a prepared source directory (its first `max_tokens` tokens)."""
    tokens = read_split(source_dir, tokenizer, "val", max_tokens)
    return stream_loss(model, tokens, tokenizer, seq_len=seq_len, batch_size=batch_size)
