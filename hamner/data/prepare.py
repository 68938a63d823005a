"""`python -m hamner.data.prepare SOURCE... --out DIR --tokenizer SPEC`: text -> llm.c token shards.

Reads documents from local files or a streamed Hugging Face dataset (see data.text_sources),
tokenizes them in parallel batches, ends every document with the tokenizer's end-of-text token,
puts every k-th document into the validation split, and writes ~100M-token shards plus meta.json.
The output directory holds an INCOMPLETE marker (written first, which also proves the directory
writable before any tokenizing) until meta.json is in place, so an interrupted prepare never looks
finished to the trainer. A shard holding conversations (chat `messages` records, or text already
in the chat format) also gets a loss-mask sidecar marking the tokens of the assistant's replies
(see data.loss_masks). Bad input prints `error: ...` and exits with 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hamner.commands.parsing import ArgumentParser, command
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
from hamner.data.text_sources import BLANK, EOT, ReadOptions, iter_documents
from hamner.errors import DataError

BATCH_DOCS = 512
BATCH_CHARS = 4 << 20

EXAMPLES = """examples:
  python -m hamner.data.prepare stories.txt --out DATA/tinystories --tokenizer path/to/tokenizer.json
  python -m hamner.data.prepare notes.txt --split-docs blank --out DATA/notes --tokenizer bytes
  python -m hamner.data.prepare chats.jsonl --out DATA/sft --tokenizer HuggingFaceTB/cosmo2-tokenizer
  python -m hamner.data.prepare HuggingFaceFW/fineweb-edu --hf-config sample-10BT --max-tokens 2_000_000_000 \\
      --out DATA/fineweb --tokenizer HuggingFaceTB/cosmo2-tokenizer

sources: .txt/.md (split into documents), .jsonl and .parquet (a text field, or chat
`messages: [{role, content}]`), .vtt/.srt subtitles (one document per file), folders of those,
or a Hugging Face dataset name (streamed; needs the network). Shards holding conversations get a
loss-mask sidecar (train_000000.mask) marking the assistant's replies, for loss = "assistant"."""


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
    for old in [out / META] + shards + sorted(out.glob(f"*{MASK_SUFFIX}")):  # meta.json first
        old.unlink(missing_ok=True)
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


def _int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text!r}")
    return value


def build_parser(prog: str = "python -m hamner.data.prepare") -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog,
        description="Tokenize text files or a Hugging Face dataset into llm.c uint16 shards for training.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="local files/folders or a Hugging Face dataset name")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output directory, one per source (e.g. DATA/tinystories)")
    p.add_argument("--tokenizer", required=True, metavar="SPEC",
                   help='"bytes", a path to tokenizer.json, or a hub name in the local HF cache')
    p.add_argument("--split-docs", default=EOT, metavar="SEP",
                   help=f'document separator in text files: a literal string (default {EOT}) '
                        f'or "{BLANK}" for blank lines')
    p.add_argument("--whole", action="store_true", help="each text file is one document")
    p.add_argument("--text-field", default="text", metavar="F",
                   help="text field of .jsonl/.parquet/dataset records (default text)")
    p.add_argument("--val-fraction", type=_fraction, default=0.01, metavar="F",
                   help="share of documents for the val split (default 0.01)")
    p.add_argument("--max-tokens", type=_int, metavar="N",
                   help="stop after this many tokens (the last document is cut)")
    p.add_argument("--shard-tokens", type=_int, default=100_000_000, metavar="N",
                   help="tokens per shard (default 100_000_000)")
    p.add_argument("--hf-config", metavar="NAME", help="dataset configuration, e.g. sample-10BT")
    p.add_argument("--hf-split", default="train", metavar="SPLIT", help="dataset split to stream (default train)")
    p.add_argument("--workers", type=_int, metavar="N", help="tokenizer threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is shown only on a terminal anyway)")
    return p


@command(interrupted="interrupted; the output directory is not complete (run the command again, with "
                     "--overwrite if it wrote shards)")
def main(argv: list[str] | None = None, prog: str = "python -m hamner.data.prepare") -> int:
    """Tokenize the sources the flags name into shards and print what was written."""
    args = build_parser(prog).parse_args(argv)
    if args.workers:
        os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # read when the tokenizer's thread pool starts
    from hamner.data.tokenizer import load_tokenizer

    if not args.split_docs:
        raise DataError("--split-docs needs a non-empty separator")
    out: Path = args.out
    old = shard_paths(out, "train") + shard_paths(out, "val") + sorted(out.glob(f"*{MASK_SUFFIX}")) \
        + [p for p in (out / META, out / INCOMPLETE) if p.exists()]
    if old and not args.overwrite:
        raise DataError(f"{out} already holds shards (or an unfinished prepare); pass --overwrite to replace them")
    tokenizer = load_tokenizer(args.tokenizer)
    opts = ReadOptions(separator=args.split_docs, whole=args.whole, text_field=args.text_field,
                       hf_config=args.hf_config, hf_split=args.hf_split)
    meta = prepare(args.sources, out, tokenizer, opts, args.val_fraction, args.max_tokens, args.shard_tokens,
                   progress=not args.quiet)
    docs, toks = meta["documents"], meta["tokens"]
    shards = len(meta["shards"]["train"])
    print(f"wrote {toks['train']:,} train tokens ({docs['train']:,} documents, {shards} shard(s)) "
          f"and {toks['val']:,} val tokens ({docs['val']:,} documents) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
