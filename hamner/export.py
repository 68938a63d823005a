"""Export a Hamner checkpoint as a Hugging Face Llama directory: `python -m hamner.export CKPT OUT_DIR`.

Hamner blocks are Llama blocks with two fused matmuls (q/k/v and gate/up) and tied embeddings,
so the export only renames tensors and splits the fused ones along their rows. The directory
holds `config.json` (LlamaConfig fields), `model.safetensors` and the tokenizer files, and loads
with `transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` with the same logits as ours.
`hamner.hf_import` reads such a directory back into a `HamnerModel`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hamner.config import HamnerConfig
from hamner.model import HamnerModel

# config.json key that records the Hamner tokenizer spec, so an import restores the exact tokenizer.
TOKENIZER_KEY = "hamner_tokenizer"
# Spec of the built-in byte-level tokenizer: ids 0-255 are the bytes, 256 is end-of-text.
BYTES_SPEC = "bytes"
EOS_TEXT = "<|endoftext|>"


def hf_config(config: HamnerConfig, eos_id: int, dtype: str = "float32") -> dict:
    """The LlamaConfig fields (as config.json holds them) describing `config`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # Older transformers read rope_theta, version 5 reads rope_parameters.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "dtype": dtype,
        TOKENIZER_KEY: config.tokenizer,
    }


def to_hf_state_dict(state: dict[str, torch.Tensor], config: HamnerConfig) -> dict[str, torch.Tensor]:
    """Hamner parameter names and fused tensors -> Hugging Face Llama names, q/k/v and gate/up split."""
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    out = {
        "model.embed_tokens.weight": state["embed.weight"],
        "model.norm.weight": state["norm.weight"],
    }
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].split([q_rows, kv_rows, kv_rows], dim=0)
        gate, up = state[ours + "mlp.gate_up.weight"].split(config.intermediate_size, dim=0)
        out.update({
            theirs + "input_layernorm.weight": state[ours + "attn_norm.weight"],
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": state[ours + "attn.out.weight"],
            theirs + "post_attention_layernorm.weight": state[ours + "mlp_norm.weight"],
            theirs + "mlp.gate_proj.weight": gate,
            theirs + "mlp.up_proj.weight": up,
            theirs + "mlp.down_proj.weight": state[ours + "mlp.down.weight"],
        })
    return {name: t.detach().contiguous() for name, t in out.items()}


def _byte_chars() -> list[str]:
    """The character byte-level pre-tokenisation writes for each byte 0..255 (printable bytes stand
    for themselves, the others are moved to code points from 256 up, in byte order)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def byte_tokenizer_json() -> dict:
    """A Hugging Face `tokenizers` file equal to the built-in byte tokenizer (id = byte, 256 = end-of-text).

    Byte-level pre-tokenisation maps each byte to one printable character; a BPE model without
    merges whose vocabulary lists those 256 characters in byte order then gives id = byte value.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in enumerate(_byte_chars())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS_TEXT])
    return json.loads(tokenizer.to_str())


def tokenizer_file(spec: str) -> Path:
    """The tokenizer.json a spec names: a file, a folder holding one, or a hub name in the local HF cache."""
    source = Path(spec).expanduser()
    if source.is_dir():
        source = source / "tokenizer.json"
    if source.is_file():
        return source
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec, "tokenizer.json")
    except ValueError:  # not a valid hub repository name
        cached = None
    if not isinstance(cached, str):
        raise FileNotFoundError(f"tokenizer {spec!r} is neither a local tokenizer.json nor in the Hugging Face cache")
    return Path(cached)


def write_tokenizer(spec: str, out_dir: Path, max_len: int) -> None:
    """tokenizer.json + tokenizer_config.json for `spec` ("bytes", a tokenizer.json path or a cached hub name)."""
    if spec == BYTES_SPEC:
        (out_dir / "tokenizer.json").write_text(json.dumps(byte_tokenizer_json(), ensure_ascii=False))
    else:
        shutil.copyfile(tokenizer_file(spec), out_dir / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TEXT,
        "bos_token": EOS_TEXT,
        "unk_token": EOS_TEXT,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def export_hf(model: HamnerModel, config: HamnerConfig, out_dir: str | Path, eos_id: int) -> Path:
    """Write `model` as a Hugging Face Llama directory in `out_dir` (created); returns the directory.

    Only the plain Llama block (attention + SwiGLU in every layer) has a Llama equivalent; other
    mixers and MLPs are refused with a ValueError before anything is written.
    """
    if not config.llama_compatible:
        mixers = sorted({m for i in range(config.n_layers) for m in config.layer_mixer_names(i)})
        raise ValueError(f"cannot export to Hugging Face Llama: the model uses mixer(s) {'+'.join(mixers)} and "
                         f"MLP {config.mlp}; only attention + swiglu has a Llama equivalent")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    tensors = to_hf_state_dict(state, config)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(config, eos_id, dtype), indent=2) + "\n")
    write_tokenizer(config.tokenizer, out, config.max_seq_len)
    generation = {"bos_token_id": eos_id, "eos_token_id": eos_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hamner.export",
        description="Write a Hamner checkpoint as a Hugging Face Llama directory "
        "(config.json, model.safetensors, tokenizer files).",
    )
    parser.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("out_dir", help="directory to write the Hugging Face model into")
    args = parser.parse_args(argv)
    from hamner.inference import InferenceError, load_for_inference

    try:
        model, config, tokenizer = load_for_inference(args.checkpoint, "cpu")
        out = export_hf(model, config, args.out_dir, tokenizer.eos_id)
    except (InferenceError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
