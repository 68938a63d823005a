"""Training throughput of presets side by side: `python bench/presets.py` (see --help).

Each named preset is timed with its dense twin (the same shape with attention + SwiGLU, named
after the preset it equals, e.g. v3-50m for diffattn-50m and moe-50m), one after another in this
one process, on the same random batches: our training step (forward, backward, clipping, AdamW)
as `bench/throughput.py` times variant (a). Prints tokens/s, step time and peak memory (GPU), and
each preset's speed relative to its dense twin; a JSON record goes to bench/results/. On CPU the
figures are only indicative.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from environment import environment  # noqa: E402
from throughput import RESULTS_DIR, _release, make_batches, measure  # noqa: E402

from hamner.model.config import PRESETS, HamnerConfig, model_config  # noqa: E402
from hamner.model.transformer import HamnerModel  # noqa: E402
from hamner.train.throughput import peak_flops  # noqa: E402


def dense_twin(config: HamnerConfig) -> HamnerConfig:
    """The same shape with the plain Llama block in every layer."""
    return dataclasses.replace(config, mixer="attention", layer_mixers=None, mlp="swiglu")


def identity(config: HamnerConfig) -> str:
    """Equal for configs that build the same computation: Llama blocks by their parameter shapes
    (settings of unused mixers or MLPs do not matter), the others by every field."""
    if not config.llama_compatible:
        return json.dumps(config.to_dict(), sort_keys=True)
    with torch.device("meta"):
        shapes = [(name, tuple(p.shape)) for name, p in HamnerModel(config).named_parameters()]
    return json.dumps([shapes, config.max_seq_len, config.rope_theta, config.norm_eps])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/presets.py", description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="swa-125m,diffattn-50m,moe-50m",
                   help=f"comma-separated presets from {', '.join(PRESETS)} (default swa-125m,diffattn-50m,moe-50m)")
    p.add_argument("--batch-size", type=int, default=4, help="rows per step (default 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per row (default 128)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", type=Path, help="JSON file to write (default bench/results/presets-<device>-<time>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names or min(args.batch_size, args.seq_len, args.steps) < 1 or args.warmup < 0:
        print(f"error: presets must be among {', '.join(PRESETS)} and sizes positive "
              f"(got --presets {args.presets!r})", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env, peak = environment(device), peak_flops(device)
    results: dict[str, dict] = {}
    for name in names:
        config = model_config(name)
        twin = dense_twin(config)
        twin_label = next((p for p in PRESETS if identity(PRESETS[p]) == identity(twin)), f"{name} dense twin")
        for label, shape in ((twin_label, twin), (name, config)):
            if any(r["identity"] == identity(shape) for r in results.values()):
                continue
            if args.seq_len > shape.max_seq_len:
                print(f"error: --seq-len {args.seq_len} exceeds the context of {name}", file=sys.stderr)
                return 2
            with torch.device("meta"):
                meta = HamnerModel(shape)
            batches = make_batches(shape, args.batch_size, args.seq_len, args.warmup + args.steps, device)
            print(f"{label} ...", flush=True)
            figures = measure("a", shape, batches, args.warmup, device, meta.flops_per_token(args.seq_len), peak)
            results[label] = {**figures, "config": shape.to_dict(), "identity": identity(shape),
                              "twin": identity(dense_twin(shape)), "parameters": meta.num_parameters(),
                              "active_parameters": meta.num_parameters(active=True)}
            _release(device)
    print(f"\nbatch {args.batch_size} x {args.seq_len}, {args.steps} timed steps, {env['gpu'] or 'cpu'} "
          f"({torch.get_num_threads()} threads), {'bf16 autocast' if device.type == 'cuda' else 'fp32'}")
    print(f"{'model':<26} {'parameters':>13} {'active':>13} {'tokens/s':>10} {'vs dense twin':>14} {'peak GiB':>9}")
    for label, r in results.items():
        twin = next((t for t in results.values() if t["identity"] == r["twin"]), None)
        ratio = r["tokens_per_s"] / twin["tokens_per_s"] if twin else float("nan")
        r["vs_dense_twin"] = ratio
        memory = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{label:<26} {r['parameters']:>13,} {r['active_parameters']:>13,} {r['tokens_per_s']:>10,.0f} "
              f"{ratio:>13.2f}x {memory:>9}")
    slug = (env["gpu"] or "cpu").lower().replace(" ", "-")
    out = args.out or RESULTS_DIR / f"presets-{slug}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in results.values():
        del r["identity"], r["twin"]
    record = {"benchmark": "preset training throughput (forward, backward, optimizer)", **env,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
              "threads": torch.get_num_threads(), "timing_meaningful": device.type == "cuda", "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
