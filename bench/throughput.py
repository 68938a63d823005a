"""Training throughput side by side: `python bench/throughput.py` (see --help).

Measures tokens/s, MFU and peak memory of one training step (forward, backward, gradient clipping,
optimizer) for:

  a        our model and training step: HamnerModel with the Triton kernels, fused linear +
           cross-entropy, the loop's AdamW (hamner.train.optim.build_optimizer, fused on CUDA)
  b        the same model written plainly in PyTorch: HamnerModel under
           kernels.dispatch.reference_only() (eager, SDPA attention, unfused ops, logits materialised)
  c        (b) under torch.compile
  d        transformers' LlamaForCausalLM of the same shape (tied embeddings, SDPA attention),
           loaded with the same initial weights, with a plain AdamW (decay on matrices, fused on CUDA)
  d-liger  (d) with Liger-Kernel applied (apply_liger_kernel_to_llama), when liger-kernel is installed
  e        a minimal plain-PyTorch GPT of the same width, depth, heads and vocabulary (bench/minimal_gpt.py:
           LayerNorm, learned positions, GELU MLP), with the same AdamW

All variants see the same random token batches (one seeded generator), run the same number of
steps after the same warm-up (excluded from the timing), in this one process, one after another,
under bf16 autocast on a GPU (fp32 on CPU, as the training loop does). Every variant is stepped by
the training loop's own step function, `hamner.train.step.train_step` (with grad_accum=1): autocast
forward, backward, clip_grad_norm_(1.0), optimizer step skipped on a non-finite loss (on CUDA
through the fused kernel's found_inf, without a host sync), zero_grad(set_to_none=True). On a CPU
the process first applies the trainer's allocator setting (`hamner.train.host_memory.keep_freed_memory`),
which every variant then shares.

The table gives each variant's figures and (a)'s speed-up over it; a JSON file with the device,
driver, versions, config and figures goes to bench/results/. CPU runs work (use a tiny shape:
`--preset demo --batch-size 2 --seq-len 64 --steps 3`) but their timings are not meaningful.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout that was not pip-installed, too

from environment import environment  # noqa: E402
from minimal_gpt import MinimalGPT  # noqa: E402

from hamner.commands.parsing import ArgumentParser, command  # noqa: E402
from hamner.errors import HamnerError  # noqa: E402
from hamner.kernels import dispatch  # noqa: E402
from hamner.model.config import PRESETS, HamnerConfig, model_config  # noqa: E402
from hamner.model.transformer import HamnerModel  # noqa: E402
from hamner.train import step as hamner_step  # noqa: E402
from hamner.train.host_memory import keep_freed_memory  # noqa: E402
from hamner.train.optim import BETAS, WEIGHT_DECAY, build_optimizer  # noqa: E402
from hamner.train.throughput import peak_flops  # noqa: E402

VARIANTS: dict[str, str] = {
    "a": "hamner (ours)",
    "b": "plain PyTorch, eager",
    "c": "plain PyTorch, torch.compile",
    "d": "HF LlamaForCausalLM",
    "d-liger": "HF Llama + Liger-Kernel",
    "e": "minimal plain GPT",
}
LR = 3e-4
SEED = 1234
RESULTS_DIR = ROOT / "bench" / "results"
CPU_NOTE = "note: no GPU, so these CPU timings are NOT meaningful; they only show the benchmark runs"


class BenchError(HamnerError):
    """A bad benchmark setting; the message is one line for the user."""


@dataclass
class Setup:
    """One variant ready to train: the loss of a batch, its optimizer, its context."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    context: Callable[[], contextlib.AbstractContextManager]


def _hamner_model(config: HamnerConfig, device: torch.device | str) -> HamnerModel:
    torch.manual_seed(SEED)
    return HamnerModel(config).to(device)


def _adamw(groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=fused, foreach=not fused)


def _hf_model(config: HamnerConfig, device: torch.device, liger: bool) -> torch.nn.Module:
    """LlamaForCausalLM with our config and our initial weights (tied embeddings, SDPA attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hamner.use.hf import hf_config, to_hf_state_dict

    hf = LlamaForCausalLM(LlamaConfig(**hf_config(config, eos_id=0), attn_implementation="sdpa"))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(_hamner_model(config, "cpu").state_dict(), config),
                                             strict=False)
    if unexpected or set(missing) != {"lm_head.weight"}:  # lm_head is the tied embedding
        raise RuntimeError(f"Llama weights do not match ours: missing {missing}, unexpected {unexpected}")
    hf = hf.to(device).train()
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(model=hf)
    return hf


def build(variant: str, config: HamnerConfig, device: torch.device) -> Setup:
    """Model, loss and optimizer of one variant, freshly initialised from the same seed."""
    if variant in ("a", "b", "c"):
        model = _hamner_model(config, device)
        optimizer = build_optimizer(model, LR, device)
        run = torch.compile(model) if variant == "c" else model
        plain = variant != "a"
        return Setup(lambda idx, targets: run(idx, targets), optimizer, lambda: dispatch.reference_only(plain))
    if variant == "e":
        torch.manual_seed(SEED)
        gpt = MinimalGPT(config).to(device)
        groups = [{"params": [p for p in gpt.parameters() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for p in gpt.parameters() if p.dim() < 2], "weight_decay": 0.0}]
        return Setup(gpt, _adamw(groups, device), contextlib.nullcontext)
    hf = _hf_model(config, device, liger=variant == "d-liger")
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    no_decay = [p for p in hf.parameters() if p.dim() < 2]
    optimizer = _adamw([{"params": decay, "weight_decay": WEIGHT_DECAY},
                        {"params": no_decay, "weight_decay": 0.0}], device)

    def loss(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # shift_labels: targets are already the next tokens (the same windows our model gets).
        return hf(input_ids=idx, labels=targets, shift_labels=targets, use_cache=False).loss

    return Setup(loss, optimizer, contextlib.nullcontext)


def make_batches(config: HamnerConfig, batch: int, seq_len: int, count: int,
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` (idx, targets) pairs cut from random windows of seq_len + 1 tokens, one seeded generator."""
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for _ in range(count):
        window = torch.randint(0, config.vocab_size, (batch, seq_len + 1), generator=gen)
        out.append((window[:, :-1].contiguous().to(device), window[:, 1:].contiguous().to(device)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: str, config: HamnerConfig, batches: list, warmup: int, device: torch.device,
            flops_per_token: float, peak: float | None) -> dict:
    """Build the variant, run warm-up then timed steps; tokens/s, MFU, peak memory, step time, losses."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup = build(variant, config, device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    losses = []
    with setup.context():
        for idx, targets in batches[:warmup]:
            hamner_step.train_step(setup.loss, [(idx, targets)], setup.optimizer, autocast_dtype=dtype)
        _sync(device)
        start = time.perf_counter()
        for idx, targets in batches[warmup:]:
            losses.append(hamner_step.train_step(setup.loss, [(idx, targets)], setup.optimizer,
                                                 autocast_dtype=dtype).loss)
        _sync(device)
        seconds = time.perf_counter() - start
    steps = len(batches) - warmup
    tokens = steps * batches[0][0].numel()
    rate = tokens / seconds
    values = torch.stack(losses).float().tolist()
    return {
        "name": VARIANTS[variant],
        "tokens_per_s": rate,
        "mfu": rate * flops_per_token / peak if peak else None,
        "step_ms": seconds / steps * 1e3,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "first_loss": values[0],
        "last_loss": values[-1],
    }


def measure_interleaved(variants: list[str], config: HamnerConfig, batches: list, warmup: int,
                        device: torch.device, flops_per_token: float, peak: float | None) -> dict[str, dict]:
    """All variants built at once and timed step by step in turn (a, d, e, a, d, e, ...), so load from
    other jobs falls on every variant alike; each gets the median of its step times. Peak memory is
    not reported (the variants coexist)."""
    setups = {name: build(name, config, device) for name in variants}
    dtype = torch.bfloat16 if device.type == "cuda" else None
    for setup in setups.values():
        with setup.context():
            for idx, targets in batches[:warmup]:
                hamner_step.train_step(setup.loss, [(idx, targets)], setup.optimizer, autocast_dtype=dtype)
    step_s: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    for idx, targets in batches[warmup:]:
        for name, setup in setups.items():
            with setup.context():
                _sync(device)
                start = time.perf_counter()
                losses[name].append(hamner_step.train_step(setup.loss, [(idx, targets)], setup.optimizer,
                                                           autocast_dtype=dtype).loss)
                _sync(device)
                step_s[name].append(time.perf_counter() - start)
    out = {}
    for name in variants:
        seconds = statistics.median(step_s[name])
        rate = batches[0][0].numel() / seconds
        values = torch.stack(losses[name]).float().tolist()
        out[name] = {"name": VARIANTS[name], "tokens_per_s": rate,
                     "mfu": rate * flops_per_token / peak if peak else None, "step_ms": seconds * 1e3,
                     "peak_memory_gib": None, "first_loss": values[0], "last_loss": values[-1]}
    return out


def median_round(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the upper middle one for an even count), with every round's rate."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "round_tokens_per_s": [r["tokens_per_s"] for r in runs]}


def _release(device: torch.device) -> None:
    """Free what the previous variant left (compiled graphs, cached blocks) before the next one."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Per variant: (a)'s speed-up over it and its peak memory relative to (a)'s."""
    if "a" not in results:
        return {}
    a = results["a"]
    out = {}
    for name, r in results.items():
        memory = (r["peak_memory_gib"] / a["peak_memory_gib"]
                  if r["peak_memory_gib"] and a["peak_memory_gib"] else None)
        out[name] = {"a_speedup": a["tokens_per_s"] / r["tokens_per_s"], "peak_memory_vs_a": memory}
    return out


def format_table(results: dict[str, dict], rel: dict[str, dict]) -> str:
    """The printed table: one row per variant."""
    head = (f"{'variant':<36} {'tokens/s':>12} {'MFU':>7} {'step ms':>9} {'peak GiB':>9} "
            f"{'(a) speed-up':>13} {'mem vs (a)':>11}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "-"
        speedup = f"{rel[name]['a_speedup']:.2f}x" if name in rel else "-"
        mem_rel = rel.get(name, {}).get("peak_memory_vs_a")
        mem_rel_cell = f"{mem_rel:.2f}x" if mem_rel is not None else "-"
        label = f"({name}) {r['name']}"
        lines.append(f"{label:<36} {r['tokens_per_s']:>12,.0f} {mfu:>7} {r['step_ms']:>9.1f} {mem:>9} "
                     f"{speedup:>13} {mem_rel_cell:>11}")
    return "\n".join(lines)


def choose_variants(spec: str | None, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(variants to run, variant -> why it is left out). Named explicitly, a variant that cannot run is an error."""
    liger = importlib.util.find_spec("liger_kernel") is not None
    if spec is None:
        skipped = {}
        if device.type != "cuda":
            skipped["c"] = "torch.compile on CPU takes minutes to compile; name it in --variants to run it anyway"
        if not liger:
            skipped["d-liger"] = "liger-kernel is not installed"
        return [v for v in VARIANTS if v not in skipped], skipped
    chosen = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        raise BenchError(f"unknown variant(s) {', '.join(unknown) or repr(spec)}; choose from {','.join(VARIANTS)}")
    if "d-liger" in chosen and not liger:
        raise BenchError("variant d-liger needs liger-kernel, which is not installed (pip install liger-kernel)")
    return list(dict.fromkeys(chosen)), {}


def default_out(preset: str, env: dict) -> Path:
    """bench/results/throughput-<preset>-<gpu or cpu>-<UTC time>.json"""
    slug = (env["gpu"] or "cpu").lower().replace(" ", "-")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"throughput-{preset}-{slug}-{stamp}.json"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python bench/throughput.py",
                description="Tokens/s, MFU and peak memory of one training step (forward, backward, optimizer):\n"
                            "ours against plain PyTorch, torch.compile and Hugging Face Llama (+ Liger-Kernel),\n"
                            "on the same batches. Prints a table of ratios and writes a JSON record.",
                epilog="variants:\n" + "\n".join(f"  {k:<8} {v}" for k, v in VARIANTS.items()),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="v3-50m", choices=list(PRESETS), help="model preset (default v3-50m)")
    p.add_argument("--batch-size", type=int, default=24, help="rows per step (default 24)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default 1024)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of all variants, alternating; each variant's "
                                                          "median round is reported (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--interleave", action="store_true", help="build every variant at once and time them step by "
                   "step in turn, each taking its median step (for a machine other jobs load; no peak memory)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (default: all that can "
                                      "run here; c is left out on CPU, d-liger without liger-kernel)")
    p.add_argument("--out", type=Path, help="JSON file to write (default bench/results/throughput-<preset>-"
                                            "<device>-<time>.json)")
    return p


def _check(args: argparse.Namespace, config: HamnerConfig) -> None:
    for name in ("batch_size", "seq_len", "steps", "rounds"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {args.threads}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must not be negative, got {args.warmup}")
    if args.seq_len > config.max_seq_len:
        raise BenchError(f"--seq-len {args.seq_len} exceeds the context of preset {args.preset!r} "
                         f"({config.max_seq_len} tokens)")


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    """TF32 matmuls on, as the training loop sets them."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@command()
def main(argv: list[str] | None = None) -> int:
    """Measure the variants the flags name, print the table and write the JSON record."""
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = model_config(args.preset)
    _check(args, config)
    variants, skipped = choose_variants(args.variants, device)
    if not config.llama_compatible:  # (d) loads our weights into a transformers Llama
        for name in [v for v in variants if v.startswith("d")]:
            variants.remove(name)
            skipped[name] = "the preset's mixers or MLP have no transformers Llama equivalent"
    if args.threads:
        torch.set_num_threads(args.threads)
    # The trainer's CPU allocator setting, once for the whole process: every variant runs with it.
    kept_freed_memory = device.type == "cpu" and keep_freed_memory()
    env = environment(device)
    with torch.device("meta"):  # parameter counts only, no memory
        flops_per_token = HamnerModel(config).flops_per_token(args.seq_len)
    peak = peak_flops(device)
    batches = make_batches(config, args.batch_size, args.seq_len, args.warmup + args.steps, device)
    print(f"{args.preset}: batch {args.batch_size} x {args.seq_len} tokens, {args.warmup} warm-up + {args.steps} "
          f"timed steps on {env['gpu'] or 'cpu'}, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}")
    for name, reason in skipped.items():
        print(f"({name}) {VARIANTS[name]}: left out, {reason}")
    rounds: dict[str, list[dict]] = {name: [] for name in variants}
    failed: dict[str, str] = {}
    with _tf32():
        for round_index in range(args.rounds):  # variants alternate, so a busy spell hits them all alike
            if args.interleave:
                print(f"all variants, step by step in turn ... (round {round_index + 1}/{args.rounds})", flush=True)
                for name, result in measure_interleaved(variants, config, batches, args.warmup, device,
                                                        flops_per_token, peak).items():
                    rounds[name].append(result)
                _release(device)
                continue
            for name in [v for v in variants if v not in failed]:
                print(f"({name}) {VARIANTS[name]} ... (round {round_index + 1}/{args.rounds})", flush=True)
                try:
                    rounds[name].append(measure(name, config, batches, args.warmup, device, flops_per_token, peak))
                except Exception as exc:  # one broken baseline must not lose the others' figures
                    failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    print(f"({name}) failed: {failed[name]}", file=sys.stderr)
                _release(device)
    results = {name: median_round(runs) for name, runs in rounds.items() if runs and name not in failed}
    rel = ratios(results)
    if results:
        print(format_table(results, rel))
    if device.type != "cuda":
        print(CPU_NOTE)
    record = {
        "benchmark": "training throughput (forward, backward, optimizer)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **env,
        "preset": args.preset, "config": config.to_dict(),
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "interleave": args.interleave, "threads": torch.get_num_threads(),
        "kept_freed_memory": kept_freed_memory,
        "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
        "flops_per_token": flops_per_token, "peak_flops": peak,
        "timing_meaningful": device.type == "cuda",
        "results": results, "ratios": rel, "left_out": skipped, "failed": failed,
    }
    out = args.out or default_out(args.preset, env)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
