"""`hamner prepare SOURCE... --out DIR --tokenizer SPEC`: text -> llm.c token shards.

The command around `hamner.data.prepare`, which reads, tokenizes and writes the shards (see there):
this module reads the command line, refuses an output directory that already holds shards unless
--overwrite, and prints what was written. Bad input prints `error: ...` and exits with 2.
"""
from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.data.prepare import check_output, prepare
from hamner.data.text_sources import BLANK, EOT, ReadOptions
from hamner.errors import DataError

EXAMPLES = """examples:
  hamner prepare stories.txt --out DATA/tinystories --tokenizer path/to/tokenizer.json
  hamner prepare notes.txt --split-docs blank --out DATA/notes --tokenizer bytes
  hamner prepare chats.jsonl --out DATA/sft --tokenizer HuggingFaceTB/cosmo2-tokenizer
  hamner prepare HuggingFaceFW/fineweb-edu --hf-config sample-10BT --max-tokens 2_000_000_000 \\
      --out DATA/fineweb --tokenizer HuggingFaceTB/cosmo2-tokenizer

sources: .txt/.md (split into documents), .jsonl and .parquet (a text field, or chat
`messages: [{role, content}]`), .vtt/.srt subtitles (one document per file), folders of those,
or a Hugging Face dataset name (streamed; needs the network). Shards holding conversations get a
loss-mask sidecar (train_000000.mask) marking the assistant's replies, for loss = "assistant"."""


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


def build_parser(prog: str = "hamner prepare") -> argparse.ArgumentParser:
    """The command's flags, with the examples above as the help's epilog."""
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
def main(argv: list[str] | None = None, prog: str = "hamner prepare") -> int:
    """Tokenize the sources the flags name into shards and print what was written."""
    args = build_parser(prog).parse_args(argv)
    if args.workers:
        os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # read when the tokenizer's thread pool starts
    from hamner.data.tokenizer import load_tokenizer

    if not args.split_docs:
        raise DataError("--split-docs needs a non-empty separator")
    out: Path = args.out
    check_output(out, args.overwrite)
    tokenizer = load_tokenizer(args.tokenizer)
    opts = ReadOptions(separator=args.split_docs, whole=args.whole, text_field=args.text_field,
                       hf_config=args.hf_config, hf_split=args.hf_split)
    previous = signal.signal(signal.SIGTERM, _stop)  # a SIGTERM cleans up as Ctrl-C does, then one line
    try:
        meta = prepare(args.sources, out, tokenizer, opts, args.val_fraction, args.max_tokens, args.shard_tokens,
                       progress=not args.quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)
    docs, toks = meta["documents"], meta["tokens"]
    shards = len(meta["shards"]["train"])
    print(f"wrote {toks['train']:,} train tokens ({docs['train']:,} documents, {shards} shard(s)) "
          f"and {toks['val']:,} val tokens ({docs['val']:,} documents) to {out}")
    return 0


def _stop(signum: int, frame: object) -> None:
    """SIGTERM as KeyboardInterrupt: the temporaries and the INCOMPLETE mark are handled, and one line says so."""
    raise KeyboardInterrupt
