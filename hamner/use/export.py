"""`hamner export CKPT OUT_DIR`: write a checkpoint as a Hugging Face Llama directory.

The format itself lives in `hamner.use.hf`; this module is the command around it, including the check
that the export never lands in a run or checkpoint directory (its config.json would replace the one
the run resumes from) nor, without --force, in any other non-empty directory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hamner.commands.parsing import ArgumentParser, command
from hamner.use.hf import export_hf
from hamner.use.load import load_for_inference

# Files only Hamner writes: a run directory, its checkpoints folder, or one checkpoint.
HAMNER_MARKERS = ("checkpoints", "latest", "trainer.pt", "metrics.csv", "train.log")


def check_export_target(out_dir: str | Path, force: bool = False) -> None:
    """Refuse to export into a non-empty directory unless `force`, and into a Hamner run or checkpoint
    directory even then. Raises FileExistsError with a one-line message."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if _is_hamner_dir(out):
        raise FileExistsError(f"{out} is a Hamner run or checkpoint directory; exporting there would overwrite "
                              "its files (pick another OUT_DIR)")
    if not force:
        raise FileExistsError(f"{out} is not empty; pass --force to write the export into it")


def _is_hamner_dir(path: Path) -> bool:
    if any((path / marker).exists() for marker in HAMNER_MARKERS):
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("settings" in config or str(config.get("format", "")).startswith("hamner"))


@command()
def main(argv: list[str] | None = None, prog: str = "python -m hamner.use.export") -> int:
    """Export the checkpoint the flags name and print where it went."""
    parser = ArgumentParser(
        prog=prog,
        description="Write a Hamner checkpoint as a Hugging Face Llama directory "
        "(config.json, model.safetensors, tokenizer files).",
    )
    parser.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("out_dir", help="directory to write the Hugging Face model into (new or empty)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty directory (never into a "
                        "Hamner run or checkpoint directory)")
    args = parser.parse_args(argv)
    check_export_target(args.out_dir, args.force)
    model, config, tokenizer = load_for_inference(args.checkpoint, "cpu")
    out = export_hf(model, config, args.out_dir, tokenizer.eos_id)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
