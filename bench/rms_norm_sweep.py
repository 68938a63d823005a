"""RMSNorm backward launch configurations, timed: `python bench/rms_norm_sweep.py` (see --help).

Times the RMSNorm backward (dx and dweight from the saved rstd; with the residual gradient, as
add_rms_norm's backward runs) under every `BackwardTiling` in `hamner.kernels.norms.BWD_CANDIDATES`
at each preset's hidden width and 24 x 1024 rows in bf16, against PyTorch's own RMSNorm backward
(`F.rms_norm` under autograd). Reports the median milliseconds, the achieved GB/s (dy, x, the
residual gradient read; dx written) and the speed-up over PyTorch, and writes a JSON record
(GPU, versions, shapes, every timing) to bench/results/. On a CPU it only runs under
TRITON_INTERPRET=1 (tiny shapes, for CI; timings not meaningful).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout that was not pip-installed, too

from environment import environment  # noqa: E402
from timing import median_ms, time_calls  # noqa: E402

from hamner.commands.parsing import ArgumentParser, command  # noqa: E402
from hamner.kernels import norms  # noqa: E402
from hamner.model.config import PRESETS  # noqa: E402


def time_tilings(width: int, rows: int, device: torch.device, dtype: torch.dtype, warmup: int,
                 reps: int) -> dict[str, dict]:
    """Median ms and GB/s of each candidate tiling and of PyTorch's backward at one shape."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen).to(device, dtype)
    dy = torch.randn(rows, width, generator=gen).to(device, dtype)
    ds = torch.randn(rows, width, generator=gen).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(width, generator=gen)).to(device, dtype)
    _, rstd = norms._rms_norm_fwd(x, weight, 1e-5)
    moved = 4 * rows * width * x.element_size() + rows * 4  # dy, x, ds read; dx written; rstd read
    out: dict[str, dict] = {}
    for tiling in norms.BWD_CANDIDATES:
        with norms.set_backward_tiling(tiling):
            ms = median_ms(time_calls(lambda _: norms._rms_norm_bwd(dy, x, weight, rstd, ds), 1, device, warmup, reps))
        out[tiling.name()] = {"ms": ms, "gbps": moved / (ms * 1e-3) / 1e9}
    xt, wt = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y = F.rms_norm(xt, (width,), wt, 1e-5)
    ms = median_ms(time_calls(lambda _: torch.autograd.grad(y, (xt, wt), dy, retain_graph=True), 1, device,
                              warmup, reps))
    out["torch F.rms_norm"] = {"ms": ms, "gbps": moved / (ms * 1e-3) / 1e9}
    for figures in out.values():
        figures["speedup_vs_torch"] = ms / figures["ms"]
    return out


@command()
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python bench/rms_norm_sweep.py", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=24 * 1024, help="rows (batch x sequence; default 24576)")
    p.add_argument("--presets", nargs="+", default=["v3-50m", "v2-164m"], choices=sorted(PRESETS),
                   help="presets whose hidden widths to time (default v3-50m v2-164m)")
    p.add_argument("--reps", type=int, default=50, help="timed calls per configuration (default 50)")
    p.add_argument("--out", type=Path, help="JSON record (default bench/results/rms_norm_sweep-<gpu>.json)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("needs a CUDA GPU (or TRITON_INTERPRET=1 for a CPU check at tiny shapes)")
    if args.rows < 1 or args.reps < 1:
        p.error("--rows and --reps must be at least 1")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    env = environment(device)
    results = {}
    for preset in args.presets:
        width = PRESETS[preset].hidden_size
        results[preset] = {"width": width, "rows": args.rows,
                           "timings": time_tilings(width, args.rows, device, dtype, warmup=min(10, args.reps),
                                                   reps=args.reps)}
        print(f"{preset}: {args.rows} x {width} {str(dtype).removeprefix('torch.')}")
        for name, t in sorted(results[preset]["timings"].items(), key=lambda kv: kv[1]["ms"]):
            print(f"  {name:<28} {t['ms']:8.4f} ms {t['gbps']:8.1f} GB/s {t['speedup_vs_torch']:6.2f}x vs torch")
    slug = (env["gpu"] or "cpu").lower().replace(" ", "-")
    out = args.out or ROOT / "bench" / "results" / f"rms_norm_sweep-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "RMSNorm backward tilings", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              **env, "dtype": str(dtype), "timing_meaningful": cuda, "results": results}
    partial = out.with_suffix(".json.tmp")  # a kill mid-write leaves the previous record whole
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
