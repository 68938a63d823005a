"""Time to a target validation loss, recipe against recipe: `python bench/speedrun.py` (see --help).

A fixed model trains on fixed data (the shared TinyStories text, tokenized into a temporary
directory; validation on a held-out 2 % of its stories) with each recipe in turn, through the real
training loop (`hamner.train.trainer.train`: same data order, seed, batch and evaluation points). The
target is the AdamW recipe's final validation loss; for every recipe the run records the tokens and
wall-clock seconds (training plus its evaluations, from the loop's own clock) at the first
evaluation at or below the target, and the ratio of those tokens to AdamW's.

Recipes (peak rates set by reasoning and a few short CPU trials, not swept; see bench/README.md):
  adamw-cosine   AdamW, warmup then cosine to 10 % (as the original projects ran)
  muon-cosine    Muon for the hidden matrices (AdamW for the rest), same schedule
  muon-wsd       Muon, warmup-stable-decay (1-sqrt decay over the last 20 %)
  muon-wsd-short Muon + wsd with 70 % of the step budget: a wsd run ends where it is told to
  speedrun       the speedrun recipe (curricula speedrun-demo / speedrun): the speedrun-demo (cpu) or
                 speedrun (gpu) model, Muon + cosine with the embeddings at an AdamW rate of their own,
                 a sequence-length warm-up from a quarter of the rows, half the step budget
  speedrun-fixed-len  the same without the sequence-length warm-up (what the warm-up buys)

Configurations: `cpu` (the demo model, 2 CPU threads, about 4 minutes on an idle 2-core
machine; on a machine shared with other jobs use --threads 1, as OpenMP threads that wait for
each other slow every step there) and `gpu` (v3-50m with the cosmo2 tokenizer, bf16, a few
minutes on an H100). The JSON
record (machine, versions, settings, every evaluation of every recipe, the summary) goes to
bench/results/speedrun-<config>.json unless --out says otherwise; the table is printed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout that was not pip-installed, too

from environment import environment  # noqa: E402

from hamner.commands.parsing import ArgumentParser, command  # noqa: E402
from hamner.device import pick_device  # noqa: E402
from hamner.run.directory import METRICS  # noqa: E402
from hamner.train.settings import TrainSettings  # noqa: E402
from hamner.train.trainer import train  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
TRAIN_TEXT = "tinystories_train_2MiB.txt"
VAL_FRACTION = 0.02


@dataclass(frozen=True)
class Recipe:
    """An optimizer, a schedule and their rates; `budget` is the share of the step budget it runs."""

    optimizer: str
    schedule: str
    lr: float
    muon_lr: float | None = None
    budget: float = 1.0
    preset: str | None = None  # the model, when not the configuration's
    embed_lr: float | None = None
    head_lr: float | None = None
    seq_len_start: int | None = None  # rows warm up from this length to the configuration's seq_len


@dataclass(frozen=True)
class Config:
    """The fixed model, data shape and step budget of one speedrun configuration."""

    preset: str
    tokenizer: str  # "bytes" or a tokenizer.json under the data directory
    batch_size: int
    seq_len: int
    steps: int
    warmup_steps: int
    eval_interval: int
    eval_batches: int
    threads: int | None
    dtype: str | None


CONFIGS: dict[str, Config] = {
    "cpu": Config(preset="demo", tokenizer="bytes", batch_size=16, seq_len=128, steps=600, warmup_steps=30,
                  eval_interval=50, eval_batches=4, threads=2, dtype=None),
    "gpu": Config(preset="v3-50m", tokenizer="cosmo2_tokenizer.json", batch_size=32, seq_len=512, steps=300,
                  warmup_steps=40, eval_interval=25, eval_batches=8, threads=None, dtype="bf16"),
}
# The speedrun recipe, as hamner/curricula/speedrun-demo.toml and speedrun.toml train it (bench/test_speedrun.py
# holds them together): the embedding tables (and the tied head) learn at 4x the AdamW rate.
SPEEDRUN_CPU = Recipe("muon", "cosine", lr=5e-3, muon_lr=0.05, budget=0.5, preset="speedrun-demo", embed_lr=0.02,
                      seq_len_start=32)
SPEEDRUN_GPU = Recipe("muon", "cosine", lr=1.5e-3, muon_lr=0.03, budget=0.5, preset="speedrun", embed_lr=6e-3,
                      seq_len_start=128)
RECIPES: dict[str, dict[str, Recipe]] = {
    "cpu": {
        "adamw-cosine": Recipe("adamw", "cosine", lr=5e-3),
        "muon-cosine": Recipe("muon", "cosine", lr=5e-3, muon_lr=0.05),
        "muon-wsd": Recipe("muon", "wsd", lr=5e-3, muon_lr=0.05),
        "muon-wsd-short": Recipe("muon", "wsd", lr=5e-3, muon_lr=0.05, budget=0.7),
        "speedrun": SPEEDRUN_CPU,
        "speedrun-fixed-len": replace(SPEEDRUN_CPU, seq_len_start=None),
    },
    "gpu": {
        "adamw-cosine": Recipe("adamw", "cosine", lr=1.5e-3),
        "muon-cosine": Recipe("muon", "cosine", lr=1.5e-3, muon_lr=0.03),
        "muon-wsd": Recipe("muon", "wsd", lr=1.5e-3, muon_lr=0.03),
        "muon-wsd-short": Recipe("muon", "wsd", lr=1.5e-3, muon_lr=0.03, budget=0.7),
        "speedrun": SPEEDRUN_GPU,
        "speedrun-fixed-len": replace(SPEEDRUN_GPU, seq_len_start=None),
    },
}
BASELINE = "adamw-cosine"


def curriculum_text(recipe: Recipe, steps: int, warmup: int, eval_interval: int, seq_len: int) -> str:
    """One TinyStories stage of `steps` with the recipe's optimizer, rates, schedule and rows (`seq_len`
    tokens, or a warm-up to them)."""
    lines = ['name = "speedrun"', f"eval_interval = {eval_interval}", f'optimizer = "{recipe.optimizer}"',
             f"seq_len = {seq_len}"]
    if recipe.muon_lr is not None:
        lines.append(f"muon_lr = {recipe.muon_lr}")
    lines += ["[[stages]]", 'name = "tinystories"', "weights = { tinystories = 1.0 }", f"steps = {steps}",
              f"lr = {recipe.lr}", f"warmup_steps = {warmup}", f'schedule = "{recipe.schedule}"']
    lines += [f"{name} = {value}" for name, value in (("embed_lr", recipe.embed_lr), ("head_lr", recipe.head_lr))
              if value is not None]
    if recipe.seq_len_start is not None:
        lines.append(f"seq_len = [{recipe.seq_len_start}, {seq_len}]")
    if recipe.schedule != "constant":
        lines.append("min_lr_ratio = 0.1" if recipe.schedule == "cosine" else "min_lr_ratio = 0.0")
    return "\n".join(lines) + "\n"


def prepare_data(data_dir: Path, tokenizer: str, work: Path) -> Path:
    """Tokenize the shared TinyStories text into work/tinystories (train + a held-out val split)."""
    out = work / "tinystories"
    cmd = [sys.executable, "-m", "hamner", "prepare", str(data_dir / TRAIN_TEXT), "--out", str(out),
           "--tokenizer", tokenizer, "--val-fraction", str(VAL_FRACTION), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: preparing {TRAIN_TEXT} failed: {done.stderr.strip().splitlines()[-1:]}")
    return work


def run_recipe(name: str, recipe: Recipe, config: Config, data: Path, tokenizer: str, work: Path,
               device: str) -> list[dict[str, float]]:
    """Train one recipe; its evaluations as [{step, tokens, elapsed_s, val_loss}]."""
    steps = max(2, round(config.steps * recipe.budget))
    path = work / f"{name}.toml"
    path.write_text(curriculum_text(recipe, steps, min(config.warmup_steps, steps - 1), config.eval_interval,
                                    config.seq_len))
    out = work / name
    settings = TrainSettings(
        preset=recipe.preset or config.preset, curriculum=str(path), tokenizer=tokenizer, data=str(data),
        out=str(out), device=device, batch_size=config.batch_size, dtype=config.dtype,
        log_interval=config.eval_interval, eval_batches=config.eval_batches, save_interval=10 ** 9,
        task_samples=0, sample_tokens=0, threads=config.threads, seed=1337)
    result = train(settings)
    if result.reason != "finished":  # a signal (Ctrl-C, SIGTERM) or diverged losses end the whole speedrun
        raise SystemExit(f"error: recipe {name} stopped at step {result.step} ({result.reason})")
    with open(out / METRICS, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    return [{"step": int(r["step"]), "tokens": int(r["tokens"]), "elapsed_s": float(r["elapsed_s"]),
             "val_loss": float(r["val_loss"])} for r in rows]


def summarise(curves: dict[str, list[dict[str, float]]]) -> dict[str, dict]:
    """Per recipe: final loss, tokens and seconds to the target (AdamW's final loss), ratio to AdamW."""
    target = curves[BASELINE][-1]["val_loss"]
    reached = {name: next((e for e in curve if e["val_loss"] <= target), None) for name, curve in curves.items()}
    base = reached[BASELINE]
    summary = {}
    for name, curve in curves.items():
        hit = reached[name]
        summary[name] = {
            "final_val_loss": curve[-1]["val_loss"],
            "tokens_run": curve[-1]["tokens"],
            "tokens_to_target": hit["tokens"] if hit else None,
            "seconds_to_target": hit["elapsed_s"] if hit else None,
            "tokens_ratio": hit["tokens"] / base["tokens"] if hit else None,
            "seconds_ratio": hit["elapsed_s"] / base["elapsed_s"] if hit else None,
        }
    return {"target_val_loss": target, "recipes": summary}


def table(summary: dict) -> str:
    """The markdown table of a summary."""
    lines = [f"target: validation loss {summary['target_val_loss']:.4f} (the {BASELINE} recipe's final)", "",
             "| recipe | final val loss | tokens to target | x AdamW tokens | seconds to target | x AdamW time |",
             "|---|---|---|---|---|---|"]
    for name, s in summary["recipes"].items():
        if s["tokens_to_target"] is None:
            lines.append(f"| {name} | {s['final_val_loss']:.4f} | not reached in {s['tokens_run']:,} | - | - | - |")
        else:
            lines.append(f"| {name} | {s['final_val_loss']:.4f} | {s['tokens_to_target']:,} | "
                         f"{s['tokens_ratio']:.2f} | {s['seconds_to_target']:.1f} | {s['seconds_ratio']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python bench/speedrun.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="cpu (demo model) or gpu (v3-50m)")
    p.add_argument("--steps", type=int, help="step budget of the full-length recipes (default: the config's)")
    p.add_argument("--eval-interval", type=int, help="steps between evaluations (default: the config's)")
    p.add_argument("--batch-size", type=int, help="rows per step (default: the config's)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: the config's)")
    p.add_argument("--recipes", nargs="+", metavar="NAME",
                   help=f"recipes to run (default all; {BASELINE} always runs, it sets the target)")
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA,
                   help=f"folder holding {TRAIN_TEXT} (and cosmo2_tokenizer.json for gpu); default {SHARED_DATA}")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    p.add_argument("--out", type=Path, help="JSON record (default bench/results/speedrun-<config>.json)")
    args = p.parse_args(argv)
    known = RECIPES[args.config]
    bad = [r for r in args.recipes or [] if r not in known]
    if bad:
        p.error(f"unknown recipe {bad[0]!r}; choose from {', '.join(known)}")
    for name, least in (("steps", 2), ("eval_interval", 1), ("batch_size", 1), ("threads", 1)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be at least {least}")
    if not (args.data_dir / TRAIN_TEXT).is_file():
        p.error(f"{args.data_dir / TRAIN_TEXT} does not exist; give --data-dir")
    return args


@command()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = CONFIGS[args.config]
    config = replace(config, steps=args.steps or config.steps, eval_interval=args.eval_interval or config.eval_interval,
                     batch_size=args.batch_size or config.batch_size, threads=args.threads or config.threads)
    names = [BASELINE] + [n for n in (args.recipes or RECIPES[args.config]) if n != BASELINE]
    tokenizer = config.tokenizer if config.tokenizer == "bytes" else str(args.data_dir / config.tokenizer)
    device = pick_device(args.device)
    started = time.perf_counter()
    curves: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hamner-speedrun-") as tmp:
        work = Path(tmp)
        data = prepare_data(args.data_dir, tokenizer, work)
        for name in names:
            curves[name] = run_recipe(name, RECIPES[args.config][name], config, data, tokenizer, work, args.device)
            print(f"{name}: final validation loss {curves[name][-1]['val_loss']:.4f} "
                  f"({curves[name][-1]['elapsed_s']:.0f}s)", flush=True)
    summary = summarise(curves)
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(device),
        "config": args.config, "settings": asdict(config),
        "recipes": {n: asdict(RECIPES[args.config][n]) for n in names},
        "threads": torch.get_num_threads(), "total_seconds": round(time.perf_counter() - started, 1),
        "summary": summary, "evaluations": curves,
    }
    out = args.out or ROOT / "bench" / "results" / f"speedrun-{args.config}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(record, indent=1))
    tmp_out.replace(out)
    print(table(summary))
    print(f"record: {out} ({record['total_seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
