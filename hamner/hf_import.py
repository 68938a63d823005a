"""Read a Hugging Face Llama directory (as `hamner.export` writes it) back into a `HamnerModel`.

The inverse of the export: q/k/v and gate/up are concatenated along their rows into our fused
matmuls and the names mapped back. Only what Hamner can represent is accepted (tied embeddings,
no biases, SiLU, plain RoPE); anything else is refused with a message naming the field.
`train.py --init-from` and `hamner.checkpoint.load_model` use `load_hf_model` for such directories.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from hamner.config import HamnerConfig
from hamner.export import BYTES_SPEC, TOKENIZER_KEY
from hamner.model import HamnerModel


def is_hf_dir(path: str | Path) -> bool:
    """True when `path` is a directory holding a Hugging Face Llama `config.json`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        fields = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(fields, dict) and (
        fields.get("model_type") == "llama" or "LlamaForCausalLM" in fields.get("architectures", [])
    )


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
            raise ValueError(f"{path}: {name} is {value!r}; Hamner models need {wanted!r}")
    head_dim = fields.get("head_dim") or fields["hidden_size"] // fields["num_attention_heads"]
    if head_dim * fields["num_attention_heads"] != fields["hidden_size"]:
        raise ValueError(f"{path}: head_dim {head_dim} x heads must equal hidden_size {fields['hidden_size']}")


def hf_tokenizer_spec(path: str | Path, fields: dict) -> str:
    """The Hamner tokenizer spec of an exported directory: the recorded built-in one, else its tokenizer.json."""
    if fields.get(TOKENIZER_KEY) == BYTES_SPEC:
        return BYTES_SPEC
    local = Path(path) / "tokenizer.json"
    if local.is_file():
        return str(local.resolve())
    if fields.get(TOKENIZER_KEY):
        return str(fields[TOKENIZER_KEY])
    raise ValueError(f"{path}: no tokenizer.json and no {TOKENIZER_KEY} entry in config.json")


def hf_to_hamner_config(path: str | Path) -> HamnerConfig:
    """The HamnerConfig equivalent to the LlamaConfig in `path`/config.json."""
    path = Path(path)
    fields = json.loads((path / "config.json").read_text())
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
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{path}: no model.safetensors (only safetensors weights are read)")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def from_hf_state_dict(tensors: dict[str, torch.Tensor], config: HamnerConfig) -> dict[str, torch.Tensor]:
    """Hugging Face Llama tensors -> Hamner parameter names with q/k/v and gate/up fused."""
    embed = tensors["model.embed_tokens.weight"]
    head = tensors.get("lm_head.weight")
    if head is not None and not torch.equal(head, embed):
        raise ValueError("lm_head.weight differs from the input embedding; Hamner ties the two")
    state = {"embed.weight": embed, "norm.weight": tensors["model.norm.weight"]}
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        attn, mlp = theirs + "self_attn.", theirs + "mlp."
        state.update({
            ours + "attn_norm.weight": tensors[theirs + "input_layernorm.weight"],
            ours + "attn.qkv.weight": torch.cat(
                [tensors[attn + "q_proj.weight"], tensors[attn + "k_proj.weight"], tensors[attn + "v_proj.weight"]]
            ),
            ours + "attn.out.weight": tensors[attn + "o_proj.weight"],
            ours + "mlp_norm.weight": tensors[theirs + "post_attention_layernorm.weight"],
            ours + "mlp.gate_up.weight": torch.cat([tensors[mlp + "gate_proj.weight"], tensors[mlp + "up_proj.weight"]]),
            ours + "mlp.down.weight": tensors[mlp + "down_proj.weight"],
        })
    return state


def load_hf_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[HamnerModel, HamnerConfig]:
    """A HamnerModel (fp32, eval mode) with the weights of the Hugging Face Llama directory `path`.

    Every problem (not such a directory, a field or weight missing, unreadable or mis-shaped
    weights, something Hamner cannot represent) is a ValueError with a one-line message.
    """
    path = Path(path)
    if not is_hf_dir(path):
        raise ValueError(f"{path} is not a Hugging Face Llama directory (no llama config.json)")
    try:
        config = hf_to_hamner_config(path)
    except KeyError as exc:
        raise ValueError(f"{path}/config.json lacks {exc.args[0]!r}") from None
    try:
        tensors = _read_tensors(path)
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"{path}: unreadable weights: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        state = from_hf_state_dict(tensors, config)
    except KeyError as exc:
        raise ValueError(f"{path}: weight {exc.args[0]} is missing") from None
    model = HamnerModel(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit config.json: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), config
