"""The Hugging Face adapter: Hamner models to and from Hugging Face Llama directories.

Hamner blocks are Llama blocks with two fused matmuls (q/k/v and gate/up), and the output head is
the embedding or (`tie_embeddings = false`) Llama's `lm_head`, so both directions only rename tensors
and split (export) or concatenate (import) the fused ones along their rows; the name tables below serve
both. An exported directory holds `config.json` (LlamaConfig
fields plus the Hamner tokenizer spec), `model.safetensors` and the tokenizer files, and loads with
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` with the same logits as ours. An import
accepts what transformers itself saves (one weights file or shards) as long as Hamner can represent
it (no biases, SiLU, plain RoPE); anything else is refused with a message naming the field; an
`lm_head.weight` that differs from the embedding (and is not tied by config.json) imports as an untied
head. A model with other mixers or MLPs than attention + SwiGLU has no Llama equivalent and is refused,
and so is one with `logit_softcap`: LlamaConfig has no final-logit soft cap (Gemma 2's
`final_logit_softcapping` is another architecture).
`hamner.use.load.load_model` reads such directories; `hamner export` writes them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hamner.data.tokenizer import hub_tokenizer_file
from hamner.errors import CheckpointError, ExportError, one_line
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel, build_model
from hamner.run.directory import inside
from hamner.run.durable import move_into_place, replace_atomically, write_text

# config.json key that records the Hamner tokenizer spec, so an import restores the exact tokenizer.
TOKENIZER_KEY = "hamner_tokenizer"
# Spec of the built-in byte-level tokenizer: ids 0-255 are the bytes, 256 is end-of-text.
BYTES_SPEC = "bytes"
EOS_TEXT = "<|endoftext|>"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARD_INDEX_FILE = "model.safetensors.index.json"

# Weights outside the layers: Hamner name -> Hugging Face name.
GLOBAL_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
# The output head of an untied model (tie_embeddings = false); both sides call it lm_head.
HEAD_NAME = "lm_head.weight"
# Per-layer weights that map one to one (under layers.{i}. and model.layers.{i}.).
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
# Fused per-layer weights: Hamner name -> the Hugging Face weights stacked along its rows, in order.
FUSED_NAMES = {
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def _fused_rows(config: HamnerConfig) -> dict[str, list[int]]:
    """Rows of each part of the fused weights, in FUSED_NAMES order."""
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return {"attn.qkv.weight": [q_rows, kv_rows, kv_rows],
            "mlp.gate_up.weight": [config.intermediate_size, config.intermediate_size]}


# ----- config -----

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
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "dtype": dtype,
        TOKENIZER_KEY: config.tokenizer,
    }


def _refuse_unsupported(fields: dict, path: Path) -> None:
    checks = {
        "hidden_act": (fields.get("hidden_act", "silu"), "silu"),
        "attention_bias": (fields.get("attention_bias", False), False),
        "mlp_bias": (fields.get("mlp_bias", False), False),
        "rope type": ((fields.get("rope_parameters") or {}).get("rope_type", "default"), "default"),
        "rope_scaling": (fields.get("rope_scaling"), None),
    }
    for name, (value, wanted) in checks.items():
        if value != wanted:
            raise CheckpointError(f"{path}: {name} is {value!r}; Hamner models need {wanted!r}")
    head_dim = fields.get("head_dim") or fields["hidden_size"] // fields["num_attention_heads"]
    if head_dim * fields["num_attention_heads"] != fields["hidden_size"]:
        raise CheckpointError(f"{path}: head_dim {head_dim} x heads must equal hidden_size {fields['hidden_size']}")


def hf_tokenizer_spec(path: str | Path, fields: dict) -> str:
    """The Hamner tokenizer spec of an exported directory: the recorded built-in one, else its tokenizer.json."""
    if fields.get(TOKENIZER_KEY) == BYTES_SPEC:
        return BYTES_SPEC
    local = Path(path) / "tokenizer.json"
    if local.is_file():
        return str(local.resolve())
    if fields.get(TOKENIZER_KEY):
        return str(fields[TOKENIZER_KEY])
    raise CheckpointError(f"{path}: no tokenizer.json and no {TOKENIZER_KEY} entry in {CONFIG_FILE}")


def hf_to_hamner_config(path: str | Path, untied_head: bool = False) -> HamnerConfig:
    """The HamnerConfig equivalent to the LlamaConfig in `path`/config.json; `untied_head`: its weights hold an
    `lm_head.weight` of their own (see `has_untied_head`)."""
    path = Path(path)
    fields = json.loads((path / CONFIG_FILE).read_text())
    _refuse_unsupported(fields, path)
    theta = (fields.get("rope_parameters") or {}).get("rope_theta", fields.get("rope_theta", 10000.0))
    return HamnerConfig(
        vocab_size=fields["vocab_size"],
        hidden_size=fields["hidden_size"],
        n_layers=fields["num_hidden_layers"],
        n_heads=fields["num_attention_heads"],
        n_kv_heads=fields.get("num_key_value_heads", fields["num_attention_heads"]),
        intermediate_size=fields["intermediate_size"],
        max_seq_len=fields["max_position_embeddings"],
        rope_theta=float(theta),
        norm_eps=fields.get("rms_norm_eps", 1e-6),
        tokenizer=hf_tokenizer_spec(path, fields),
        tie_embeddings=not (untied_head and not fields.get("tie_word_embeddings", False)),
    )


def has_untied_head(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether Hugging Face Llama `tensors` hold an output head other than their input embedding."""
    head, embed = tensors.get(HEAD_NAME), tensors.get(GLOBAL_NAMES["embed.weight"])
    return head is not None and (embed is None or not torch.equal(head, embed))


# ----- weights, both directions -----

def to_hf_state_dict(state: dict[str, torch.Tensor], config: HamnerConfig) -> dict[str, torch.Tensor]:
    """Hamner parameter names and fused tensors -> Hugging Face Llama names, q/k/v and gate/up split."""
    out = {theirs: state[ours] for ours, theirs in GLOBAL_NAMES.items()}
    if not config.tie_embeddings:
        out[HEAD_NAME] = state[HEAD_NAME]
    rows = _fused_rows(config)
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        out.update({theirs + hf: state[ours + name] for name, hf in LAYER_NAMES.items()})
        for name, parts in FUSED_NAMES.items():
            out.update(zip((theirs + hf for hf in parts), state[ours + name].split(rows[name], dim=0)))
    return {name: t.detach().contiguous() for name, t in out.items()}


def hf_sources(n_layers: int, tied: bool = True) -> dict[str, tuple[str, ...]]:
    """Each Hamner parameter name -> the Hugging Face Llama tensors it is made of (several: stacked along rows);
    `tied` False adds the output head."""
    sources = {ours: (theirs,) for ours, theirs in GLOBAL_NAMES.items()}
    if not tied:
        sources[HEAD_NAME] = (HEAD_NAME,)
    for i in range(n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        sources.update({ours + name: (theirs + hf,) for name, hf in LAYER_NAMES.items()})
        sources.update({ours + name: tuple(theirs + hf for hf in parts) for name, parts in FUSED_NAMES.items()})
    return sources


def from_hf_state_dict(tensors: dict[str, torch.Tensor], config: HamnerConfig) -> dict[str, torch.Tensor]:
    """Hugging Face Llama tensors -> Hamner parameter names with q/k/v and gate/up fused (a missing one: KeyError);
    a tied `config` ignores any `lm_head.weight`, as transformers does for a tied model."""
    return {ours: torch.cat([tensors[name] for name in parts])
            for ours, parts in hf_sources(config.n_layers, config.tie_embeddings).items()}


# ----- reading a directory -----

def is_hf_dir(path: str | Path) -> bool:
    """True when `path` is a directory holding a Hugging Face Llama `config.json`."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        fields = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(fields, dict) and (
        fields.get("model_type") == "llama" or "LlamaForCausalLM" in fields.get("architectures", [])
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / SHARD_INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for name in files:  # a shard named outside the directory is not this model's
            inside(path, name, f"{SHARD_INDEX_FILE} names weight file", CheckpointError)
    elif (path / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} (only safetensors weights are read)")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def load_hf_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HamnerModel, HamnerConfig]:
    """A HamnerModel (fp32, eval mode) with the weights of the Hugging Face Llama directory `path`.

    Every problem (not such a directory, a field or weight missing, unreadable or mis-shaped
    weights, something Hamner cannot represent) is a ValueError with a one-line message.
    """
    path = Path(path)
    if not is_hf_dir(path):
        raise CheckpointError(f"{path} is not a Hugging Face Llama directory (no llama {CONFIG_FILE})")
    try:
        tensors = _read_tensors(path)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: unreadable weights: {one_line(exc)}") from None
    try:
        config = hf_to_hamner_config(path, has_untied_head(tensors))
    except KeyError as exc:
        raise CheckpointError(f"{path}/{CONFIG_FILE} lacks {exc.args[0]!r}") from None
    try:
        state = from_hf_state_dict(tensors, config)
    except KeyError as exc:
        raise CheckpointError(f"{path}: weight {exc.args[0]} is missing") from None
    model = build_model(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {CONFIG_FILE}: {one_line(exc)}") from None
    return model.to(device).eval(), config


# ----- writing a directory -----

def byte_chars() -> list[str]:
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

    vocab = {char: byte for byte, char in enumerate(byte_chars())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS_TEXT])
    return json.loads(tokenizer.to_str())


def tokenizer_file(spec: str) -> Path:
    """The tokenizer.json a spec names: a file, a folder holding one, or a hub name (cache, then download;
    a one-line DataError when neither has it)."""
    source = Path(spec).expanduser()
    if source.is_dir():
        source = source / "tokenizer.json"
    if source.is_file():
        return source
    return hub_tokenizer_file(spec)


def write_tokenizer(spec: str, out_dir: Path, max_len: int) -> None:
    """tokenizer.json + tokenizer_config.json for `spec` ("bytes", a tokenizer.json path or a hub name),
    each written durably."""
    if spec == BYTES_SPEC:
        write_text(out_dir / "tokenizer.json", json.dumps(byte_tokenizer_json(), ensure_ascii=False))
    else:
        replace_atomically(out_dir / "tokenizer.json", [tokenizer_file(spec).read_bytes()])
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TEXT,
        "bos_token": EOS_TEXT,
        "unk_token": EOS_TEXT,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }
    write_text(out_dir / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")


def export_hf(model: HamnerModel, config: HamnerConfig, out_dir: str | Path, eos_id: int) -> Path:
    """Write `model` as a Hugging Face Llama directory in `out_dir` (created); returns the directory.

    Only the plain Llama block (attention + SwiGLU in every layer) has a Llama equivalent; other
    mixers and MLPs, and the options a Llama has no place for (qk_norm, value_embeddings, skip), are
    refused with an ExportError before anything is written. Every file is written
    durably (hamner.run.durable) and config.json, which makes the directory a model to `is_hf_dir`, last:
    a kill or a full disk part-way never leaves a directory that reads as a complete model. A failed
    write is a one-line ExportError.
    """
    if config.llama_incompatibility is not None:
        raise ExportError(f"cannot export to Hugging Face Llama: {config.llama_incompatibility}")
    out = Path(out_dir)
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    tensors = to_hf_state_dict(state, config)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).unlink(missing_ok=True)  # a --force export over an older one: not a model until done
        weights = out / f".{WEIGHTS_FILE}.tmp"
        try:
            save_file(tensors, str(weights), metadata={"format": "pt"})
            move_into_place(weights, out / WEIGHTS_FILE)
        finally:
            weights.unlink(missing_ok=True)
        write_tokenizer(config.tokenizer, out, config.max_seq_len)
        write_text(out / "generation_config.json",
                   json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id}, indent=2) + "\n")
        write_text(out / CONFIG_FILE, json.dumps(hf_config(config, eos_id, dtype), indent=2) + "\n")
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise ExportError(f"cannot write the export to {out}: {reason}; it is left without {CONFIG_FILE}, "
                          "so nothing reads it as a model") from None
    return out
