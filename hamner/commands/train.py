"""The `train` command: its flags (built from TrainSettings) and its entry point `main(argv)`.

`python train.py` (top level) calls `main`; the defaults reproduce Hamner V3.1 on one GPU (preset
v3-50m, curriculum hamner-v3.1, batch 24 x 1024 tokens, bf16). `--preset demo` trains a small
byte-level model on the built-in sources only, on a CPU, in a few minutes. Multi-GPU:
`torchrun --nproc_per_node=N train.py ...`. Bad input prints one `error: ...` line and exits 2.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import get_args, get_type_hints

from hamner.commands.parsing import ArgumentParser, command
from hamner.train.settings import TrainSettings, default_text, flag, resume_settings
from hamner.train.trainer import train

PROG = "python train.py"
EPILOG = """examples:
  python train.py --preset demo                      # CPU demo on built-in data, a few minutes
  python train.py --preset agiformer-31m --batch-size 4 --seq-len 256   # any preset on built-in data
  python train.py --preset agiformer-31m --curriculum agiformer-3stage --data DATA
  python train.py --data DATA                        # Hamner V3.1 on one GPU (shards under DATA/)
  python train.py --curriculum hamner-4phase --init-from runs/v3-50m-.../ --data DATA
  python train.py --preset tinygpt-50m --data DATA  # tiny_gpt's plan (gpt2 tokenizer), stops at 3 hours
  python train.py --resume runs/v3-50m-20260101-120000
  torchrun --nproc_per_node=8 train.py --data DATA   # DistributedDataParallel

Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and exits; continue with --resume.
So does reaching --time-budget; continue with --resume RUN_DIR --time-budget LONGER."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per TrainSettings field: its help, group, metavar and choices come from the field."""
    p = ArgumentParser(
        prog=prog, description="Train a small Llama-style model through a staged curriculum.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=None)
    groups: dict[str, argparse._ArgumentGroup] = {}
    types = get_type_hints(TrainSettings)
    for f in fields(TrainSettings):
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = p.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        default = default_text(f.name)
        help_text = f"{meta['help']} ({default})" if default else meta["help"]
        kind = types[f.name]
        if kind is bool:
            group.add_argument(flag(f.name), action="store_true", help=help_text)
            continue
        options: dict = {"help": help_text, "metavar": meta["metavar"], "choices": meta["choices"]}
        if kind == list[str]:
            options["nargs"] = "+"
        else:
            options["type"] = next(t for t in (int, float, str) if t == kind or t in get_args(kind))
        group.add_argument(flag(f.name), **options)
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from parsed flags: explicit flags win, the rest keep their defaults (or, with
    --resume, the values the run was started with)."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings)
             if getattr(args, f.name, None) is not None and getattr(args, f.name) is not False}
    if args.resume:
        return resume_settings(Path(args.resume), given)
    return TrainSettings(**given)


@command(interrupted="interrupted; the last checkpoint saved is kept (continue with --resume RUN_DIR)")
def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parse `argv` and train; exit status 0 when done, 1 when stopped by non-finite losses."""
    args = build_parser(prog).parse_args(argv)
    result = train(settings_from_args(args))
    return 1 if result.reason == "non_finite" else 0
