"""Measure the shard reader: MixtureSampler batches per second from one prepared source directory.

    python bench/bench_reader.py DATA/tinystories --tokenizer path/to/tokenizer.json [--batch 24 --row-len 1025]

Single process, no prefetching: the figure is what one data thread can feed the trainer.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout that was not pip-installed, too

from hamner.commands.parsing import ArgumentParser, command  # noqa: E402
from hamner.data.mixture import Mixture, MixtureSampler  # noqa: E402
from hamner.data.tokenizer import load_tokenizer  # noqa: E402
from hamner.data.windows import ShardSource  # noqa: E402


@command()
def main(argv: list[str] | None = None, prog: str = "python bench/bench_reader.py") -> int:
    """Time the sampler on one source for --seconds and print batches and tokens per second."""
    p = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="a prepared source directory")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--row-len", type=int, default=1025)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    source = ShardSource(args.directory, tokenizer=load_tokenizer(args.tokenizer))
    sampler, mixture = MixtureSampler({source.name: source}, seed=0), Mixture({source.name: 1.0})
    step, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.seconds:
        sampler.rows(step, mixture, args.batch, args.row_len)
        step += 1
    rate = step / elapsed
    print(f"{rate:,.0f} batches/s ({rate * args.batch * args.row_len / 1e6:,.1f} M tokens/s) "
          f"for {args.batch} x {args.row_len} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
