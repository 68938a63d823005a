"""GGUF export on the CPU: file size per quantisation and greedy decoding speed, llama.cpp beside Hamner.

    python bench/gguf_speed.py [--checkpoint RUN] [--preset demo [--tokenizer SPEC]] [--new-tokens 200]
                               [--threads 2] [--repeats 3] [--save]

One model (a run's latest checkpoint, or a seeded fresh model of a preset: speed does not depend on
the weights) is exported with `export_gguf` at f32, f16 and q8_0. Each file is run by llama.cpp
(llama-cpp-python, f32 KV cache as in the logits test) and the model by Hamner's `generate` (the
decoding `hamner chat` uses, with its decoding cache): the same prompt, then `--new-tokens` greedy
tokens, best wall time of `--repeats`, on `--threads` threads each. tokens/s = new tokens / wall
time, prompt processing included. `--save` writes bench/results/gguf_speed-MODEL-threadsN-cpu.json. Not a pytest
test (the file name keeps pytest from collecting it).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hamner.data.tokenizer import load_tokenizer  # noqa: E402
from hamner.model.config import model_config  # noqa: E402
from hamner.model.transformer import HamnerModel  # noqa: E402
from hamner.use.generate import generate  # noqa: E402
from hamner.use.gguf_file import QUANTS, export_gguf  # noqa: E402
from hamner.use.load import load_for_inference  # noqa: E402

PROMPT = "Once upon a time, there was a little"


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def llama_cpp_greedy(path: Path, ids: list[int], new_tokens: int, n_ctx: int, threads: int, repeats: int) -> float:
    """Seconds for llama.cpp to read `ids` and add `new_tokens` greedy tokens (best of `repeats`)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=GGML_TYPE_F32,
                type_v=GGML_TYPE_F32, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run() -> None:
        llm.reset()
        llm.eval(ids)
        for _ in range(new_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    return best_seconds(run, repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run or checkpoint directory (default: a fresh --preset model)")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--tokenizer", help="the preset model's tokenizer spec instead of its own (e.g. a local "
                        "cosmo2 tokenizer.json for the v3-50m preset offline)")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, config, tokenizer = load_for_inference(args.checkpoint)
    else:
        torch.manual_seed(0)
        config = model_config(args.preset)
        config.tokenizer = args.tokenizer or config.tokenizer
        model, tokenizer = HamnerModel(config).eval(), load_tokenizer(config.tokenizer)
    ids = tokenizer.encode(PROMPT)
    if len(ids) + args.new_tokens > config.max_seq_len:
        parser.error(f"prompt ({len(ids)} tokens) + --new-tokens must fit the context of {config.max_seq_len}")
    with torch.no_grad():
        hamner_s = best_seconds(lambda: generate(model, ids, args.new_tokens, temperature=0.0), args.repeats)
    record = {"model": args.checkpoint or args.preset, "parameters": sum(p.numel() for p in model.parameters()),
              "new_tokens": args.new_tokens, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "hamner_generate_tokens_per_s": args.new_tokens / hamner_s, "gguf": {}}
    print(f"{record['model']}: {record['parameters']:,} parameters, prompt {len(ids)} tokens + {args.new_tokens} "
          f"greedy, {args.threads} threads")
    print(f"  hamner generate         {record['hamner_generate_tokens_per_s']:8.0f} tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        for quant in QUANTS:
            path = export_gguf(model, config, Path(tmp) / f"{quant}.gguf", tokenizer.eos_id, quant)
            seconds = llama_cpp_greedy(path, ids, args.new_tokens, config.max_seq_len, args.threads, args.repeats)
            record["gguf"][quant] = {"bytes": path.stat().st_size, "tokens_per_s": args.new_tokens / seconds}
            print(f"  llama.cpp {quant:<5} {path.stat().st_size:>12,} bytes {args.new_tokens / seconds:8.0f} tokens/s")
    if args.save:
        model_name = "checkpoint" if args.checkpoint else args.preset
        out = ROOT / "bench" / "results" / f"gguf_speed-{model_name}-threads{args.threads}-cpu.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
