"""`hamner export CKPT OUT_DIR` (or `python -m hamner.export`): write a checkpoint as a Hugging Face Llama directory.

The format itself lives in `hamner.hf`; this module is the command around it.
"""
from __future__ import annotations

import sys

from hamner.cli import ArgumentParser, command
from hamner.hf import export_hf
from hamner.inference import load_for_inference


@command()
def main(argv: list[str] | None = None, prog: str = "python -m hamner.export") -> int:
    """Export the checkpoint the flags name and print where it went."""
    parser = ArgumentParser(
        prog=prog,
        description="Write a Hamner checkpoint as a Hugging Face Llama directory "
        "(config.json, model.safetensors, tokenizer files).",
    )
    parser.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("out_dir", help="directory to write the Hugging Face model into")
    args = parser.parse_args(argv)
    model, config, tokenizer = load_for_inference(args.checkpoint, "cpu")
    out = export_hf(model, config, args.out_dir, tokenizer.eos_id)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
