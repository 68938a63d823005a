"""Data-layer throughput: synthetic tokens/s on one core, built-in stories/chat tokens/s, shard batches/s.

    python bench/data_throughput.py [--tokenizer PATH] [--difficulty 3] [--save]

The synthetic figure is the issue's target (>= 2M tokens/s on one CPU core, cosmo2 tokenizer, tasks
mixed, difficulty 3, token ids out): the process is pinned to one core and numba to one thread.
The shard figure prepares the TinyStories sample with `hamner prepare` into a temporary
directory and times the mixture sampler's 24 x 1025 batches. `--save` writes the figures as JSON to
bench/results/data_throughput.json. Not a pytest test (the file name keeps pytest from collecting it).
"""
from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"  # before numba is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from hamner.commands.parsing import ArgumentParser, command  # noqa: E402


def _best_rate(fn, amount: float, repeats: int) -> float:
    """Best of `repeats` timings of fn(), as amount per second."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return amount / best


def bench_synthetic(tok, difficulty: float, tokens: int, repeats: int) -> dict:
    from hamner.data.synthetic import SyntheticSource

    t = time.perf_counter()
    source = SyntheticSource(tok)
    build_s = time.perf_counter() - t
    row_len = 1025
    n_rows = max(1, tokens // row_len)
    source.rows(2, row_len, 0, difficulty)  # compile / load the numba cache outside the timing
    seeds = iter(range(1, repeats + 1))
    rate = _best_rate(lambda: source.rows(n_rows, row_len, next(seeds), difficulty), n_rows * row_len, repeats)
    return {"tokens_per_s": rate, "tokens": n_rows * row_len, "difficulty": difficulty, "build_s": build_s}


def bench_generated(cls, tok, tokens: int, repeats: int) -> dict:
    source = cls(tok)
    row_len = 1025
    n_rows = max(1, tokens // row_len)
    seeds = iter(range(1, repeats + 1))
    rate = _best_rate(lambda: source.rows(n_rows, row_len, next(seeds), 1.0), n_rows * row_len, repeats)
    return {"tokens_per_s": rate, "tokens": n_rows * row_len}


def bench_shards(tok_path: str, stories: Path, batches: int) -> dict:
    from hamner.data.mixture import Mixture, MixtureSampler
    from hamner.data.tokenizer import load_tokenizer
    from hamner.data.windows import ShardSource

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tinystories"
        cmd = [sys.executable, "-m", "hamner", "prepare", str(stories), "--out", str(out), "--tokenizer", tok_path,
               "--quiet"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: hamner prepare failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        tok = load_tokenizer(tok_path)
        sampler = MixtureSampler({"tinystories": ShardSource(out, "train", tok)}, seed=0)
        mixture = Mixture({"tinystories": 1.0})
        sampler.rows(0, mixture, 24, 1025)
        t = time.perf_counter()
        for step in range(1, batches + 1):
            sampler.rows(step, mixture, 24, 1025)
        rate = batches / (time.perf_counter() - t)
    return {"batches_per_s": rate, "batch": [24, 1025], "batches": batches, "source": stories.name}


@command()
def main(argv: list[str] | None = None) -> int:
    """Time each data path, print the figures and, with --save, record them."""
    p = ArgumentParser(prog="python bench/data_throughput.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=str(SHARED / "cosmo2_tokenizer.json"), metavar="PATH",
                   help="tokenizer.json (default: ../shared/data/cosmo2_tokenizer.json) or 'bytes'")
    p.add_argument("--difficulty", type=float, default=3.0, help="synthetic difficulty in [1, 5] (default 3)")
    p.add_argument("--tokens", type=int, default=20_000_000, help="synthetic tokens per timing (default 20M)")
    p.add_argument("--text-tokens", type=int, default=300_000, help="stories/chat tokens per timing (default 300k)")
    p.add_argument("--repeats", type=int, default=3, help="timings per figure; the best is reported (default 3)")
    p.add_argument("--stories", type=Path, default=SHARED / "tinystories_train_2MiB.txt", metavar="FILE",
                   help="text prepared into shards for the reader benchmark (default: the shared TinyStories sample)")
    p.add_argument("--batches", type=int, default=200, help="24 x 1025 batches to time (default 200)")
    p.add_argument("--skip-shards", action="store_true", help="leave out the shard reader benchmark")
    p.add_argument("--save", action="store_true", help="write bench/results/data_throughput.json")
    args = p.parse_args(argv)
    if not 1.0 <= args.difficulty <= 5.0:
        p.error(f"--difficulty must be in [1, 5], got {args.difficulty}")
    if min(args.tokens, args.text_tokens, args.repeats, args.batches) < 1:
        p.error("--tokens, --text-tokens, --repeats and --batches must be positive")
    if args.tokenizer != "bytes" and not Path(args.tokenizer).is_file():
        p.error(f"tokenizer file not found: {args.tokenizer}")
    if not args.skip_shards and not args.stories.is_file():
        p.error(f"stories file not found: {args.stories} (or pass --skip-shards)")

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, tokenizer threads included
    from hamner.data.chat_gen import ChatSource
    from hamner.data.stories import StorySource
    from hamner.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    results: dict = {"tokenizer": args.tokenizer, "cpu": platform.processor() or platform.machine(), "cores": 1}
    results["synthetic"] = s = bench_synthetic(tok, args.difficulty, args.tokens, args.repeats)
    print(f"synthetic   {s['tokens_per_s'] / 1e6:8.2f} M tokens/s  (one core, tasks mixed, "
          f"difficulty {args.difficulty:g}, {s['tokens']:,} tokens; source built in {s['build_s']:.2f} s)")
    for name, cls in (("stories", StorySource), ("chat", ChatSource)):
        results[name] = r = bench_generated(cls, tok, args.text_tokens, args.repeats)
        print(f"{name:<11} {r['tokens_per_s'] / 1e3:8.1f} k tokens/s  (one core)")
    if not args.skip_shards:
        results["shards"] = r = bench_shards(args.tokenizer, args.stories, args.batches)
        print(f"shards      {r['batches_per_s']:8.1f} batches/s of 24 x 1025 "
              "(mixture sampler over memory-mapped shards)")
    if args.save:
        out = ROOT / "bench" / "results" / "data_throughput.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
