"""`python train.py`: train a Hamner model through a curriculum (see `python train.py --help`).

The defaults reproduce Hamner V3.1 on one GPU (preset v3-50m, curriculum hamner-v3.1, batch 24 x 1024
tokens, bf16). `--preset demo` trains a small byte-level model on the built-in sources only, on a CPU,
in a few minutes. Multi-GPU: `torchrun --nproc_per_node=N train.py ...`. Bad input prints one
`error: ...` line and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from hamner.data.errors import DataError
from hamner.checkpoint import CheckpointError
from hamner.curriculum import OPTIMIZERS
from hamner.train_settings import GPU_DEFAULTS, PRESET_DEFAULTS, TrainError, TrainSettings, resume_settings
from hamner.trainer import train

EPILOG = """examples:
  python train.py --preset demo                      # CPU demo on built-in data, a few minutes
  python train.py --data DATA                        # Hamner V3.1 on one GPU (shards under DATA/)
  python train.py --curriculum hamner-4phase --init-from runs/v3-50m-.../ --data DATA
  python train.py --resume runs/v3-50m-20260101-120000
  torchrun --nproc_per_node=8 train.py --data DATA   # DistributedDataParallel

Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and exits; continue with --resume."""


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one `error: ...` line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see python train.py --help)\n")


def build_parser() -> argparse.ArgumentParser:
    demo = PRESET_DEFAULTS["demo"]
    p = _Parser(
        prog="train.py", description="Train a small Llama-style model through a staged curriculum.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=None)
    g = GPU_DEFAULTS
    what = p.add_argument_group("what to train")
    what.add_argument("--preset", help="model preset: v3-50m (default), v2-164m or demo (CPU-sized, byte-level; "
                      "also picks the demo curriculum and CPU-sized defaults)")
    what.add_argument("--curriculum", help="curriculum name from hamner/curricula/ or a path to a .toml file "
                      f"(default {g.curriculum}; {demo.curriculum} for --preset demo)")
    what.add_argument("--tokenizer", metavar="SPEC",
                      help="tokenizer instead of the preset's: a tokenizer.json path (same vocabulary), or bytes")
    what.add_argument("--data", metavar="DIR", help="directory holding the prepared shard sources the curriculum "
                      "names (made by python -m hamner.data.prepare); built-in sources need none")
    what.add_argument("--stage", type=int, metavar="N", help="start at stage N (0-based) of the curriculum")
    what.add_argument("--init-from", metavar="CKPT", help="start from these weights: a run directory, a "
                      "checkpoint directory or a Hugging Face Llama directory")
    where = p.add_argument_group("where")
    where.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<preset>-<timestamp>)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest "
                       "checkpoint (model, optimizer, curriculum, data and RNG state)")
    where.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    how = p.add_argument_group("how")
    how.add_argument("--max-steps", type=int, metavar="N",
                     help="stop after N optimizer steps in all (default: when the curriculum ends)")
    how.add_argument("--batch-size", type=int, metavar="B", help="rows per micro-batch per process "
                     f"(default {g.batch_size}; {demo.batch_size} for demo)")
    how.add_argument("--grad-accum", type=int, metavar="K", help="micro-batches per optimizer step (default 1)")
    how.add_argument("--seq-len", type=int, metavar="T",
                     help=f"tokens per row (default {g.seq_len}; {demo.seq_len} for demo)")
    how.add_argument("--lr", type=float, help="peak learning rate of the first stage; later stages keep their "
                     "ratio to it (default: the curriculum's)")
    how.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw, or muon for the hidden matrices (AdamW "
                     "for embeddings, norms and the head), in every stage (default: the curriculum's, else adamw)")
    how.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="bf16 autocast (default on GPUs), "
                     "fp16 with a gradient scaler, or fp32 (default on CPU)")
    how.add_argument("--compile", action="store_true", help="torch.compile the model")
    how.add_argument("--seed", type=int, help="seed of model init and data order (default 1337)")
    how.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    log = p.add_argument_group("logging, evaluation, checkpoints")
    log.add_argument("--log-interval", type=int, metavar="N", help="steps between metric lines "
                     f"(default {g.log_interval}; {demo.log_interval} for demo)")
    log.add_argument("--eval-interval", type=int, metavar="N",
                     help="steps between validation runs (default: the curriculum's eval_interval)")
    log.add_argument("--eval-batches", type=int, metavar="N", help="batches per validation source "
                     f"(default {g.eval_batches}; {demo.eval_batches} for demo)")
    log.add_argument("--save-interval", type=int, metavar="N",
                     help="steps between periodic checkpoints (default 1000)")
    log.add_argument("--keep-checkpoints", type=int, metavar="N", help="periodic checkpoints kept; stage ends, "
                     "best and latest are always kept (default 3)")
    log.add_argument("--task-samples", type=int, metavar="N", help="held-out samples per synthetic task scored "
                     f"at stage ends (default {g.task_samples}; {demo.task_samples} for demo; 0 = off)")
    log.add_argument("--sample-tokens", type=int, metavar="N", help="tokens generated for each fixed prompt "
                     "into samples.jsonl at stage ends (default 64; 0 = off)")
    log.add_argument("--max-bad-steps", type=int, metavar="K", help="stop after K non-finite losses in a row; "
                     "their updates are skipped (default 5)")
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from parsed flags: explicit flags win, the rest keep their defaults (or, with
    --resume, the values the run was started with)."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings)
             if getattr(args, f.name, None) is not None and getattr(args, f.name) is not False}
    if args.resume:
        return resume_settings(Path(args.resume), given)
    return TrainSettings(**given)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = train(settings_from_args(args))
    except (TrainError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the last checkpoint saved is kept (continue with --resume RUN_DIR)", file=sys.stderr)
        return 130
    return 1 if result.reason == "non_finite" else 0


if __name__ == "__main__":
    sys.exit(main())
