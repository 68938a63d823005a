"""`hamner export CKPT OUT`: write a checkpoint as a Hugging Face Llama directory or a llama.cpp GGUF file.

The formats live in `hamner.use.hf` and `hamner.use.gguf_file`, the refusal of unsafe targets in
`hamner.use.export`; this module reads the command line, loads the model and prints where the export went.
"""
from __future__ import annotations

from hamner.commands.parsing import ArgumentParser, command
from hamner.use.export import check_export_file, check_export_target
from hamner.use.gguf_file import QUANTS, export_gguf
from hamner.use.hf import export_hf
from hamner.use.load import load_for_inference, model_origin

FORMATS = ("hf", "gguf")


@command()
def main(argv: list[str] | None = None, prog: str = "hamner export") -> int:
    """Export the checkpoint the flags name and print where it went."""
    parser = ArgumentParser(
        prog=prog,
        description="Write a Hamner checkpoint as a Hugging Face Llama directory (config.json, model.safetensors, "
        "tokenizer files) or as one GGUF file for llama.cpp, Ollama and LM Studio.",
    )
    parser.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("out", help="directory to write the Hugging Face model into (new or empty), or the "
                        ".gguf file to write")
    parser.add_argument("--format", choices=FORMATS, help="hf (a directory) or gguf (one file); default: gguf "
                        "when OUT ends in .gguf, else hf")
    parser.add_argument("--quant", choices=QUANTS, help="GGUF only: the matrices' type (default f32, exact; f16 "
                        "half the size; q8_0 about 30 %% of f32); norms stay f32")
    parser.add_argument("--force", action="store_true", help="write into a non-empty directory or over an existing "
                        "file (never into a Hamner run or checkpoint directory)")
    args = parser.parse_args(argv)
    fmt = args.format or ("gguf" if args.out.endswith(".gguf") else "hf")
    if fmt == "hf" and args.quant:
        parser.error("--quant applies to --format gguf only")
    (check_export_file if fmt == "gguf" else check_export_target)(args.out, args.force)
    model, config, tokenizer = load_for_inference(args.checkpoint, "cpu")
    if fmt == "gguf":
        origin = model_origin(args.checkpoint)
        out = export_gguf(model, config, args.out, tokenizer.eos_id, args.quant or "f32", name=str(origin["run"]),
                          source=origin)
        detail = f", {args.quant or 'f32'}, {out.stat().st_size:,} bytes"
    else:
        out = export_hf(model, config, args.out, tokenizer.eos_id)
        detail = ""
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters{detail})")
    return 0
