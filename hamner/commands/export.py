"""`hamner export CKPT OUT_DIR`: write a checkpoint as a Hugging Face Llama directory.

The format lives in `hamner.use.hf` and the refusal of unsafe targets in `hamner.use.export`;
this module reads the command line, loads the model and prints where the export went.
"""
from __future__ import annotations

from hamner.commands.parsing import ArgumentParser, command
from hamner.use.export import check_export_target
from hamner.use.hf import export_hf
from hamner.use.load import load_for_inference


@command()
def main(argv: list[str] | None = None, prog: str = "hamner export") -> int:
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
