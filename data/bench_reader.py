"""Measure the shard reader: MixtureSampler batches per second from one prepared source directory.

    python -m hamner.data.bench_reader DATA/tinystories --tokenizer path/to/tokenizer.json [--batch 24 --row-len 1025]

Single process, no prefetching: the figure is what one data thread can feed the trainer.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hamner.data.errors import DataError
from hamner.data.mixture import MixtureSampler
from hamner.data.tokenizer import load_tokenizer
from hamner.data.windows import ShardSource


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hamner.data.bench_reader", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="a prepared source directory")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--row-len", type=int, default=1025)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    try:
        source = ShardSource(args.directory, tokenizer=load_tokenizer(args.tokenizer))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sampler = MixtureSampler({source.name: source}, seed=0)
    step, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.seconds:
        sampler.batch(step, args.batch, args.row_len)
        step += 1
    rate = step / elapsed
    print(f"{rate:,.0f} batches/s ({rate * args.batch * args.row_len / 1e6:,.1f} M tokens/s) "
          f"for {args.batch} x {args.row_len} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
