"""Text -> llm.c token shards: what `hamner prepare SOURCE... --out DIR --tokenizer SPEC` does.

Reads documents from local files or a streamed Hugging Face dataset (see data.text_sources),
tokenizes them in parallel batches, ends every document with the tokenizer's end-of-text token,
puts every k-th document into the validation split, and writes ~100M-token shards plus meta.json.
The output directory holds an INCOMPLETE marker (written first, which also proves the directory
writable before any tokenizing) until meta.json is in place, so an interrupted prepare never looks
finished to the trainer. A shard holding conversations (chat `messages` records, or text already
in the chat format) also gets a loss-mask sidecar marking the tokens of the assistant's replies
(see data.loss_masks). The command line lives in `hamner.commands.prepare`.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hamner.data.loss_masks import tokens_and_masks
from hamner.data.shards import (
    INCOMPLETE,
    MASK_SUFFIX,
    META,
    mark_complete,
    mark_incomplete,
    mask_path,
    shard_paths,
    write_mask,
    write_meta,
    write_shard,
)
from hamner.data.text_sources import ReadOptions, iter_documents
from hamner.errors import DataError

BATCH_DOCS = 512
BATCH_CHARS = 4 << 20


class ShardWriter:
    """Collects one split's tokens and loss masks and writes a full shard every `shard_tokens` tokens.

    A shard gets a mask sidecar only when some of its tokens do not count."""

    def __init__(self, directory: Path, split: str, shard_tokens: int) -> None:
        self.directory, self.split = directory, split
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.mask = np.empty(shard_tokens, dtype=np.uint8)
        self.fill = 0
        self.tokens = 0
        self.documents = 0
        self.shards: list[str] = []
        self.max_ids: dict[str, int] = {}  # largest token id per shard, for the trainer's vocabulary check
        self.masked_shards: list[str] = []

    def add(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        while tokens.size:
            n = min(tokens.size, self.buf.size - self.fill)
            self.buf[self.fill : self.fill + n] = tokens[:n]
            self.mask[self.fill : self.fill + n] = mask[:n]
            self.fill += n
            self.tokens += n
            tokens, mask = tokens[n:], mask[n:]
            if self.fill == self.buf.size:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            name = f"{self.split}_{len(self.shards):06d}.bin"
            if not self.mask[: self.fill].all():
                write_mask(self.directory / name, self.mask[: self.fill])
                self.masked_shards.append(mask_path(name).name)
            write_shard(self.directory / name, self.buf[: self.fill])
            self.shards.append(name)
            self.max_ids[name] = int(self.buf[: self.fill].max())
            self.fill = 0


def is_val(index: int, val_fraction: float) -> bool:
    """Document `index` goes to validation when it completes another `val_fraction` of the documents seen."""
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def _source_documents(sources: list[str], opts: ReadOptions) -> Iterator[str]:
    for source in sources:
        docs = iter_documents(source, opts)
        first = next(docs, None)
        if first is None:
            raise DataError(f"{source}: no text found (empty input)")
        yield first
        yield from docs


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def prepare(sources: list[str], out: Path, tokenizer, opts: ReadOptions, val_fraction: float = 0.01,
            max_tokens: int | None = None, shard_tokens: int = 100_000_000, progress: bool = True) -> dict:
    """Tokenize `sources` into shards under `out` (replacing any there); returns the meta.json contents.

    `out` is marked INCOMPLETE before anything else; the mark goes once meta.json is written. A
    failure before the first shard removes the mark again (and `out`, when it was created here)."""
    created = not out.exists()
    mark_incomplete(out)
    try:
        return _tokenize_into(sources, out, tokenizer, opts, val_fraction, max_tokens, shard_tokens, progress)
    except BaseException:
        if not shard_paths(out, "train") and not shard_paths(out, "val"):
            mark_complete(out)
            if created and not any(out.iterdir()):
                out.rmdir()
        raise


def _tokenize_into(sources: list[str], out: Path, tokenizer, opts: ReadOptions, val_fraction: float,
                   max_tokens: int | None, shard_tokens: int, progress: bool) -> dict:
    from tqdm import tqdm

    shards = shard_paths(out, "train") + shard_paths(out, "val")
    leftovers = sorted(out.glob(".*.tmp"))  # durable writes a killed prepare left half done
    for old in [out / META] + shards + sorted(out.glob(f"*{MASK_SUFFIX}")) + leftovers:  # meta.json first
        old.unlink(missing_ok=True)
    uncounted = 0  # chat documents with no assistant reply: nothing in them is trained on
    writers = {s: ShardWriter(out, s, shard_tokens) for s in ("train", "val")}
    index, total = 0, 0
    bar = tqdm(total=max_tokens, unit="tok", unit_scale=True, desc=f"tokenizing -> {out}", mininterval=0.5,
               disable=None if progress else True, file=sys.stderr)  # None: shown on a terminal only
    try:
        for batch in _batches(_source_documents(sources, opts)):
            for tokens, mask in tokens_and_masks(tokenizer, batch):
                if max_tokens is not None:
                    tokens, mask = tokens[: max_tokens - total], mask[: max_tokens - total]
                writer = writers["val" if is_val(index, val_fraction) else "train"]
                writer.add(tokens, mask)
                uncounted += bool(mask is not None and mask.size and not mask.any())
                writer.documents += 1
                index += 1
                total += tokens.size
                bar.update(tokens.size)
                if max_tokens is not None and total >= max_tokens:
                    break
            if max_tokens is not None and total >= max_tokens:
                break
    except BaseException:
        bar.leave = False  # the error message, not a stalled bar, is the last line
        raise
    finally:
        bar.close()
    if total == 0:
        raise DataError("the sources produced no tokens")
    if uncounted:
        print(f"warning: {uncounted} chat document(s) have no assistant reply, so no token in them counts in "
              "the loss (assistant-only training skips them)", file=sys.stderr)
    for w in writers.values():
        w.flush()
    meta = {
        "format": "llm.c shards: 256 int32 header (magic 20240520, version 1, tokens), uint16 tokens",
        "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "documents": {s: w.documents for s, w in writers.items()},
        "tokens": {s: w.tokens for s, w in writers.items()},
        "shards": {s: w.shards for s, w in writers.items()},
        "max_token_id": {**writers["train"].max_ids, **writers["val"].max_ids},
        "loss_masks": {s: w.masked_shards for s, w in writers.items()},
        "sources": sources,
        "val_fraction": val_fraction,
    }
    write_meta(out, meta)
    mark_complete(out)
    return meta


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output directory that already holds shards (or an unfinished prepare) unless `overwrite`."""
    old = shard_paths(out, "train") + shard_paths(out, "val") + sorted(out.glob(f"*{MASK_SUFFIX}")) \
        + [p for p in (out / META, out / INCOMPLETE) if p.exists()]
    if old and not overwrite:
        raise DataError(f"{out} already holds shards (or an unfinished prepare); pass --overwrite to replace them")


if __name__ == "__main__":  # `python -m hamner.data.prepare ...`, the documented spelling of `hamner prepare`
    from hamner.commands.prepare import main

    sys.exit(main(prog="python -m hamner.data.prepare"))
