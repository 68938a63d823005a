"""The GGUF export: a Hamner model as one file that llama.cpp (and Ollama, LM Studio on top of it) runs.

The file describes a llama.cpp `llama` architecture: the weights of the Hugging Face export
(`hamner.use.hf.to_hf_state_dict`) under llama.cpp's names, with the q and k rows of every head put
in RoPE pair order (0, D/2, 1, D/2 + 1, ...), the permutation llama.cpp's own Hugging Face converter
applies, since llama.cpp rotates adjacent pairs where transformers rotates halves. The output head
is left out, so llama.cpp ties it to the embedding as Hamner does. The tokenizer goes in as a
byte-level BPE (`tokenizer.ggml.model` "gpt2") in one of two forms:
  - a tokenizer.json (cosmo2, GPT-2 and other byte-level BPEs with GPT-2's or SmolLM's pre-tokenizer):
    its vocabulary, merges and special tokens as they are;
  - the built-in byte tokenizer: the 256 byte-level characters in byte order and <|endoftext|> (the
    vocabulary of `hf.byte_tokenizer_json`), with no merge that can ever fire, so every byte is its
    own token, id = byte value. llama.cpp needs a merges array and the gguf writer writes no empty
    array, so it holds one merge of two end-of-text markers, which never stand side by side as BPE
    symbols (special tokens are split off before BPE, and without merges no symbol is longer than
    one character).
The chat template (`tokenizer.chat_template`, Jinja, which llama.cpp's chat mode and llama-cpp-python
apply) writes Hamner's chat format, `hamner.data.chat_format.prompt_for_reply`.
Beginning and end of text are both <|endoftext|>, and llama.cpp adds neither to a prompt (Hamner
trains without a BOS). Quantisation (f16, q8_0) applies to the matrices; norms stay f32, and a matrix
whose rows are not a whole number of q8_0 blocks (32 values) is written f16, as llama.cpp's converter
does. The file is written to a temporary beside its target and renamed over it, so a kill or a full
disk never leaves a partial file under the final name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hamner.data.chat_format import MARKERS, escape_content
from hamner.data.tokenizer import EOT
from hamner.errors import ExportError, one_line
from hamner.model.config import HamnerConfig
from hamner.model.mixers.attention import pair_order
from hamner.model.transformer import HamnerModel
from hamner.run.durable import move_into_place
from hamner.use.hf import BYTES_SPEC, HEAD_NAME, byte_chars, to_hf_state_dict, tokenizer_file

QUANTS = ("f32", "f16", "q8_0")
ARCH = "llama"
# Hugging Face Llama name (after "model.layers.{i}.") -> llama.cpp name (after "blk.{i}.").
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
# tokenizer.json pre-tokenizers -> llama.cpp's name for the same split (tokenizer.ggml.pre).
GPT2_PRE = "gpt-2"  # ByteLevel with GPT-2's regex
SMOLLM_PRE = "smollm"  # every digit alone, then GPT-2's regex (cosmo2, SmolLM's tokenizer)


def chat_template() -> str:
    """Hamner's chat format as a Jinja chat template: each turn `<|role|>\\n{content}\\n`, the content stripped
    and the format's markers in it escaped as `escape_content` does, then an open assistant turn."""
    escape = "".join(f" | replace({m!r}, {escape_content(m)!r})" for m in (*MARKERS.values(), EOT))
    return ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] | trim" + escape
            + " }}\n{% endfor %}{% if add_generation_prompt %}" + MARKERS["assistant"] + "\n{% endif %}")


@dataclass
class GGUFVocab:
    """A tokenizer as GGUF holds it: token texts in id order, their llama.cpp token types, BPE merges."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]


def _gguf():
    """The `gguf` package, or a one-line ExportError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise ExportError("the GGUF export needs the gguf package: pip install 'hamner[gguf]'") from None
    return gguf


def gguf_tensors(model: HamnerModel, config: HamnerConfig) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's names, float32, q and k rows in RoPE pair order; `output.weight`
    only for an untied head (without it llama.cpp reads the embedding as the head)."""
    hf = to_hf_state_dict({name: t.detach().cpu().float() for name, t in model.state_dict().items()}, config)
    out = {ours: hf[theirs] for theirs, ours in GLOBAL_TENSORS.items()}
    if not config.tie_embeddings:
        out["output.weight"] = hf[HEAD_NAME]
    q_order, k_order = (pair_order(heads, config.head_dim, heads * config.head_dim)
                        for heads in (config.n_heads, config.n_kv_heads))
    for i in range(config.n_layers):
        layer = {ours: hf[f"model.layers.{i}.{theirs}"] for theirs, ours in LAYER_TENSORS.items()}
        layer["attn_q.weight"] = layer["attn_q.weight"].index_select(0, q_order)
        layer["attn_k.weight"] = layer["attn_k.weight"].index_select(0, k_order)
        out.update({f"blk.{i}.{name}": t for name, t in layer.items()})
    return {name: t.contiguous().numpy() for name, t in out.items()}


def _pre_tokenizer(spec: str, pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer; an ExportError for one it has no name for."""
    def byte_level(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    parts = (pre or {}).get("pretokenizers", [pre]) if (pre or {}).get("type") == "Sequence" else [pre or {}]
    if len(parts) == 1 and byte_level(parts[0]):
        return GPT2_PRE
    if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
            and byte_level(parts[1])):
        return SMOLLM_PRE
    raise ExportError(f"cannot export tokenizer {spec} to GGUF: its pre-tokenizer {json.dumps(pre)} is neither "
                      "GPT-2's byte-level split nor SmolLM's (digits apart, then byte-level)")


def gguf_vocab(spec: str, vocab_size: int) -> GGUFVocab:
    """The GGUF form of tokenizer `spec` ("bytes" or a byte-level BPE tokenizer.json), padded with unused
    tokens to the model's `vocab_size` rows."""
    gguf = _gguf()
    normal, control, user = (int(t) for t in (gguf.TokenType.NORMAL, gguf.TokenType.CONTROL,
                                              gguf.TokenType.USER_DEFINED))
    if spec == BYTES_SPEC:
        vocab = GGUFVocab(GPT2_PRE, [*byte_chars(), EOT], [normal] * 256 + [control], [f"{EOT} {EOT}"])
    else:
        path = tokenizer_file(spec)
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            model = fields["model"]
            if model.get("type") != "BPE" or fields.get("normalizer"):
                raise ExportError(f"cannot export tokenizer {spec} to GGUF: it is a {model.get('type')} model with "
                                  f"normalizer {json.dumps(fields.get('normalizer'))}; only byte-level BPE without a "
                                  "normalizer has a llama.cpp equivalent")
            pre = _pre_tokenizer(spec, fields.get("pre_tokenizer"))
            ids = {**model["vocab"], **{t["content"]: t["id"] for t in fields.get("added_tokens", [])}}
            special = {t["id"]: t.get("special", False) for t in fields.get("added_tokens", [])}
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExportError(f"cannot read tokenizer {path} for the GGUF export: {one_line(exc)}") from None
        tokens = sorted(ids, key=ids.get)
        if [ids[t] for t in tokens] != list(range(len(tokens))):
            raise ExportError(f"cannot export tokenizer {spec} to GGUF: its token ids are not 0..{len(tokens) - 1}")
        types = [control if special.get(i) else user if i in special else normal for i in range(len(tokens))]
        vocab = GGUFVocab(pre, tokens, types, merges)
    if len(vocab.tokens) > vocab_size:
        raise ExportError(f"tokenizer {spec} has {len(vocab.tokens)} tokens; the model's vocab_size is {vocab_size}")
    pad = range(len(vocab.tokens), vocab_size)
    vocab.tokens += [f"[PAD{i}]" for i in pad]
    vocab.types += [int(gguf.TokenType.UNUSED)] * len(pad)
    return vocab


def _encode(array: np.ndarray, quant: str) -> tuple[np.ndarray, object]:
    """(data, GGML type) of one tensor at `quant`: vectors f32; a matrix f16, or q8_0 when its rows fit."""
    gguf = _gguf()
    if array.ndim == 1 or quant == "f32":
        return array, gguf.GGMLQuantizationType.F32
    q8 = gguf.GGMLQuantizationType.Q8_0
    if quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
        return gguf.quants.quantize(array, q8), q8
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def export_gguf(model: HamnerModel, config: HamnerConfig, out_path: str | Path, eos_id: int, quant: str = "f32",
                name: str = "hamner", source: dict[str, str | int] | None = None) -> Path:
    """Write `model` as the llama.cpp GGUF file `out_path` (its folder created); returns the path.

    `name` becomes general.name; `source` (e.g. the run and the step) is recorded under hamner.*
    keys. Only what a Llama holds (attention + SwiGLU in every layer, none of the stack options or the soft
    cap; the head tied or not) has a llama.cpp equivalent; anything else is refused with an ExportError
    before anything is written, as is a failed write (no partial file is left).
    """
    gguf = _gguf()
    if quant not in QUANTS:
        raise ExportError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    if not config.llama_compatible:
        raise ExportError(f"cannot export to GGUF (llama.cpp's llama architecture): {config.llama_incompatibility}")
    vocab = gguf_vocab(config.tokenizer, config.vocab_size)
    tensors = {key: _encode(array, quant) for key, array in gguf_tensors(model, config).items()}
    out = Path(out_path)
    temp = out.with_name(f".{out.name}.tmp")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(temp, ARCH)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.max_seq_len)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.n_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.n_kv_heads)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_merges(vocab.merges)
        writer.add_chat_template(chat_template())
        writer.add_bos_token_id(eos_id)
        writer.add_eos_token_id(eos_id)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        writer.add_string("hamner.tokenizer", config.tokenizer)
        for key, value in (source or {}).items():
            (writer.add_uint64 if isinstance(value, int) else writer.add_string)(f"hamner.{key}", value)
        for key, (data, ggml_type) in tensors.items():
            writer.add_tensor(key, data, raw_dtype=ggml_type)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        move_into_place(temp, out)
    except OSError as exc:
        raise ExportError(f"cannot write the GGUF export to {out}: {exc.strerror or one_line(exc)}") from None
    finally:
        temp.unlink(missing_ok=True)
    return out
