"""The Hamner model's shape and the named presets.

A `HamnerConfig` is everything needed to rebuild a model (checkpoints store `to_dict()`), plus
the tokenizer spec its vocabulary belongs to, so a checkpoint always knows how to read text.
The token mixer(s) and MLP of the blocks are named choices from the registries in
`hamner.model.mixers` and `hamner.model.mlps`; the defaults give the plain Llama block.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamner.errors import ConfigError, HamnerError
from hamner.model.checks import number, positive_int
from hamner.model.mixers import MIXERS
from hamner.model.mlps import MLPS
from hamner.toml_table import TomlTable, read_toml

SKIPS: tuple[str, ...] = ("none", "unet")  # the `skip` choices


@dataclass
class HamnerConfig:
    """Shape and initialisation of a Llama-style decoder (pre-norm, GQA, SwiGLU, RoPE, tied embeddings).

    Two output-side options of the nanoGPT speedrun (Keller Jordan's modded-nanogpt), both off by default:
    `logit_softcap` C replaces every logit z by C·tanh(z / C) (Gemma 2's final-logit soft-capping) in the
    loss, the logits, generation and evaluation; `tie_embeddings = False` gives the model its own output
    head `lm_head`, initialised to zero, and with it zero-initialised residual output projections (every
    mixer's `out` and the MLP's `down`), modded-nanogpt's initialisation: each block then starts as the
    identity and the model as the uniform distribution.

    `tokenizer` is the spec string the data layer's `load_tokenizer` understands: "bytes", a
    tokenizer.json path or a Hugging Face hub name.

    `mixer` names the token mixer of every block ("attention", "swa", "diff_attention", ... see
    `hamner.model.mixers.MIXERS`); several joined by "+" (e.g. "swa+hebbian") run side by side on the
    same normed input and their outputs are summed. `layer_mixers` (one such name per layer)
    overrides `mixer` for hybrid stacks. `mlp` names the MLP ("swiglu", "moe", "gelu" or "relu2",
    `hamner.model.mlps.MLPS`).
    The remaining fields are settings of particular mixers and MLPs, checked by their `check_config`
    (`hamner.model.mixers.settings`, `hamner.model.mlps.settings`) and ignored by the others.
    """

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    scale_residual_init: bool = False
    activation_checkpointing: bool = False
    tokenizer: str = "bytes"
    mixer: str = "attention"
    layer_mixers: list[str] | None = None
    mlp: str = "swiglu"
    # Sliding-window attention ("swa"): each query sees the last `window` keys, itself included.
    window: int | None = None
    # Mixture-of-experts MLP ("moe"): experts of width moe_intermediate_size (default
    # intermediate_size), moe_top_k of them per token, and the weights of the auxiliary losses.
    n_experts: int = 8
    moe_top_k: int = 2
    moe_intermediate_size: int | None = None
    moe_balance_weight: float = 0.01
    moe_z_weight: float = 0.001
    # GPT-2's MLP ("gelu"): the GELU's form, "tanh" (GPT-2's approximation) or "none" (exact).
    gelu_approximate: str = "tanh"
    # Hebbian fast-weight memory ("hebbian"): the plasticity alpha of its decay
    # alpha * (0.99 + 0.01 sigmoid(theta)) until a curriculum stage sets the `plasticity` knob;
    # learnt instead (a parameter per layer, alpha = sigmoid(p) in (0, 1), starting at
    # hebbian_plasticity) with hebbian_learnt_plasticity, when no stage may set it.
    hebbian_plasticity: float = 0.99
    # AGIFORMER's memory block around that recurrence: a LayerNorm on the memory's output (after its
    # output projection), and biases on its q/k/v and output projections. Off: the bare memory.
    hebbian_out_norm: bool = False
    hebbian_bias: bool = False
    hebbian_learnt_plasticity: bool = False
    # TTT-Linear ("ttt_linear"): tokens per inner gradient step, and the inner learning rate's
    # scale (token j steps with ttt_base_lr * sigmoid(x_j w + b) / head_dim).
    ttt_mini_batch: int = 16
    ttt_base_lr: float = 1.0
    # RMSNorm on every head's queries and keys before RoPE, one learnt weight [head_dim] shared by q and k
    # (attention and swa; see hamner.model.mixers.attention).
    qk_norm: bool = False
    # Value embeddings: N extra token-embedding tables [vocab_size, n_kv_heads * head_dim]; table i is mixed
    # into the attention values of layer i and of layer n_layers - N + i (attention and swa layers only;
    # see hamner.model.mixers.attention). 0: none.
    value_embeddings: int = 0
    # "unet": the outputs of the first n_layers // 2 blocks are added, with learnt weights, to the inputs of
    # their mirrors in the second half (see hamner.model.transformer). "none": the plain stack.
    skip: str = "none"
    # Final-logit soft cap C (logits = C tanh(logits / C)); None: uncapped logits.
    logit_softcap: float | None = None
    # False: a separate, zero-initialised output head and zero-initialised residual output projections.
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                     "intermediate_size", "max_seq_len"):
            value = getattr(self, name)
            if not positive_int(value):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim (hidden_size / n_heads = {self.head_dim}) must be even for RoPE")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not number(getattr(self, name)) or not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive and finite, got {getattr(self, name)!r}")
        if self.logit_softcap is not None and (not number(self.logit_softcap) or not self.logit_softcap > 0):
            raise ConfigError(f"logit_softcap must be positive and finite (or absent), got {self.logit_softcap!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        self._check_blocks()
        self._check_stack_options()

    def _check_stack_options(self) -> None:
        """qk_norm is a switch; value_embeddings fits in the stack, on attention layers; skip is known."""
        if not isinstance(self.qk_norm, bool):
            raise ConfigError(f"qk_norm must be true or false, got {self.qk_norm!r}")
        n = self.value_embeddings
        if not (isinstance(n, int) and not isinstance(n, bool) and 0 <= 2 * n <= self.n_layers):
            raise ConfigError(f"value_embeddings must be an integer from 0 to n_layers / 2 ({self.n_layers // 2}): "
                              f"the first and the last N layers get one table each, got {n!r}")
        for i in range(self.n_layers):
            if self.value_table(i) is not None and self.layer_mixer(i) not in ("attention", "swa"):
                raise ConfigError(f"value_embeddings: layer {i} gets a value embedding but its mixer is "
                                  f"{self.layer_mixer(i)!r}; only attention and swa alone take one")
        if self.skip not in SKIPS:
            raise ConfigError(f"skip must be one of {', '.join(map(repr, SKIPS))}, got {self.skip!r}")
        if self.skip == "unet" and self.n_layers < 2:
            raise ConfigError("skip = 'unet' needs at least 2 layers (a first half to skip from)")

    def value_table(self, layer_index: int) -> int | None:
        """The value-embedding table layer `layer_index` mixes into its values, or None.

        Layer i < N takes table i, and layer n_layers - N + i takes table i too (modded-nanogpt's
        "012 ... 012" layout); the layers in between take none.
        """
        n = self.value_embeddings
        if layer_index < n:
            return layer_index
        if layer_index >= self.n_layers - n:
            return layer_index - (self.n_layers - n)
        return None

    def _check_blocks(self) -> None:
        """The mixer and MLP choices exist, and each accepts its settings (one-line errors naming the field).

        Each mixer's and MLP's own `check_config` checks its settings, taken torch-free from the registries.
        """
        used = self._used_mixers()
        if not isinstance(self.mlp, str) or self.mlp not in MLPS:
            raise ConfigError(f"mlp: unknown MLP {self.mlp!r}; choose from {', '.join(MLPS)}")
        for name in MIXERS:
            if name in used:
                MIXERS.settings(name).check_config(self)
        MLPS.settings(self.mlp).check_config(self)

    def _used_mixers(self) -> set[str]:
        """The names of the mixers the layers use, each name known and named once per layer."""
        if self.layer_mixers is not None:
            if not isinstance(self.layer_mixers, list) or len(self.layer_mixers) != self.n_layers:
                raise ConfigError(f"layer_mixers must be a list of {self.n_layers} mixer names (one per layer), "
                                 f"got {self.layer_mixers!r}")
        names = [self.mixer] if self.layer_mixers is None else self.layer_mixers
        field = "mixer" if self.layer_mixers is None else "layer_mixers"
        used: set[str] = set()
        for spec in names:
            if not isinstance(spec, str):
                raise ConfigError(f"{field}: expected a mixer name (several joined by '+'), got {spec!r}")
            parts = spec.split("+")
            for part in parts:
                if part not in MIXERS:
                    raise ConfigError(f"{field}: unknown mixer {part!r}; choose from {', '.join(MIXERS)} "
                                     "(several joined by '+')")
            if len(set(parts)) != len(parts):
                raise ConfigError(f"{field}: {spec!r} names a mixer twice")
            used.update(parts)
        return used

    def layer_mixer(self, layer_index: int) -> str:
        """The mixer spec of layer `layer_index` ("swa", or several joined by "+")."""
        return self.mixer if self.layer_mixers is None else self.layer_mixers[layer_index]

    def layer_mixer_names(self, layer_index: int) -> list[str]:
        """The mixers of layer `layer_index`, in order ("swa+hebbian" -> ["swa", "hebbian"])."""
        return self.layer_mixer(layer_index).split("+")

    @property
    def residual_init_std(self) -> float:
        """Init std of projections that write into the residual stream (init_std / sqrt(2 n_layers) if scaled)."""
        return self.init_std / math.sqrt(2 * self.n_layers) if self.scale_residual_init else self.init_std

    @property
    def llama_incompatibility(self) -> str | None:
        """Why a Hugging Face Llama cannot hold this model (one line), or None when every block is plain
        attention + SwiGLU with none of the options a Llama has no place for."""
        if self.mlp != "swiglu" or any(self.layer_mixer_names(i) != ["attention"] for i in range(self.n_layers)):
            mixers = sorted({m for i in range(self.n_layers) for m in self.layer_mixer_names(i)})
            return (f"the model uses mixer(s) {'+'.join(mixers)} and MLP {self.mlp}; only attention + swiglu has "
                    "a Llama equivalent")
        options = [name for name, on in (("qk_norm", self.qk_norm), ("value_embeddings", self.value_embeddings),
                                         ("skip", self.skip != "none")) if on]
        if options:
            return f"the model uses {', '.join(options)}, which a Llama has no place for"
        if self.logit_softcap is not None:
            return (f"logit_softcap = {self.logit_softcap} has no LlamaConfig equivalent (Llama has no final-logit "
                    "soft cap)")
        return None

    @property
    def zero_init_outputs(self) -> bool:
        """Whether the output head and the projections into the residual stream start at zero: with an
        untied head (modded-nanogpt's initialisation; see the class docstring)."""
        return not self.tie_embeddings

    @property
    def llama_compatible(self) -> bool:
        """True when a Hugging Face Llama can hold the model (`llama_incompatibility` is None)."""
        return self.llama_incompatibility is None

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HamnerConfig:
        """Inverse of `to_dict`; unknown keys are an error (they mean a foreign or newer config).

        Missing keys take their defaults, so configs saved before a field existed still load.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown HamnerConfig keys: {', '.join(unknown)}")
        return cls(**d)


COSMO2_TOKENIZER = "HuggingFaceTB/cosmo2-tokenizer"
GPT2_TOKENIZER = "gpt2"  # GPT-2's 50,257-token BPE, from the local Hugging Face cache (hamner.data.tokenizer)

# The nanoGPT speedrun's architecture changes, each a HamnerConfig option (README, The model).
# The untied zero-initialised head (tie_embeddings = False) is not among them: it lost to the tied head at
# the demo's size (hamner tournament speedrun-ablation-demo, README "The speedrun recipe").
SPEEDRUN: dict[str, Any] = dict(qk_norm=True, mlp="relu2", value_embeddings=2, skip="unet", logit_softcap=15.0)

PRESETS: dict[str, HamnerConfig] = {
    # 47,190,528 parameters.
    "v3-50m": HamnerConfig(vocab_size=49152, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
                           intermediate_size=1365, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER),
    # 163,609,344 parameters.
    "v2-164m": HamnerConfig(vocab_size=49152, hidden_size=768, n_layers=20, n_heads=12, n_kv_heads=4,
                            intermediate_size=2048, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER),
    # Byte-level (256 bytes + <|endoftext|> at id 256), 759,040 parameters: small enough that the demo
    # curriculum's ~2.5M tokens train in about three minutes on 2 CPU cores.
    "demo": HamnerConfig(vocab_size=257, hidden_size=128, n_layers=4, n_heads=4, n_kv_heads=2,
                         intermediate_size=344, max_seq_len=256, tokenizer="bytes"),
    # The TTT-125M study's sliding-window baseline (window 64): 122,702,592 parameters.
    "swa-125m": HamnerConfig(vocab_size=49152, hidden_size=768, n_layers=12, n_heads=12, n_kv_heads=12,
                             intermediate_size=2048, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER,
                             mixer="swa", window=64),
    # v3-50m with differential attention (4 differential heads per layer): 47,193,600 parameters.
    "diffattn-50m": HamnerConfig(vocab_size=49152, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
                                 intermediate_size=1365, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER,
                                 mixer="diff_attention"),
    # v3-50m with an 8-expert top-2 MoE MLP; experts half as wide as its MLP (688, rounded up to a
    # multiple of 16 for the grouped matmul), so a token uses about as many parameters as in v3-50m:
    # 98,083,328 parameters, 47,358,464 active.
    "moe-50m": HamnerConfig(vocab_size=49152, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
                            intermediate_size=1365, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER,
                            mlp="moe", n_experts=8, moe_top_k=2, moe_intermediate_size=688),
    # AGIFORMER, byte-level: every layer runs sliding-window attention and the Hebbian memory side by
    # side; the agiformer-3stage curriculum sets the memory's plasticity per stage. Its memory block is
    # AGIFORMER's: biased projections and a LayerNorm on its output. 31,024,176 parameters.
    "agiformer-31m": HamnerConfig(vocab_size=257, hidden_size=512, n_layers=6, n_heads=8, n_kv_heads=8,
                                  intermediate_size=1984, max_seq_len=1024, tokenizer="bytes",
                                  mixer="swa+hebbian", window=128, hebbian_out_norm=True, hebbian_bias=True),
    # TTT-Linear in every layer (mini-batches of 16 tokens), the shape of swa-125m. 123,449,424 parameters.
    # Each layer matches the TTT authors' 125M TTT-Linear layer (ttt-lm-pytorch: tied head, no gate, no
    # conv) parameter for parameter (7,141,660); the total differs from their 110,276,688 by the vocabulary
    # only: cosmo2's 49,152 tokens against Llama-2's 32,000, (49,152 - 32,000) x 768 = 13,172,736 more in
    # the tied embedding. The study's quoted 152.6M is no combination of that code's switches (README, The model).
    "ttt-125m": HamnerConfig(vocab_size=49152, hidden_size=768, n_layers=12, n_heads=12, n_kv_heads=12,
                             intermediate_size=2048, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER,
                             mixer="ttt_linear"),
    # tiny_gpt's plan: 8 layers of 8 heads at width 512, GPT-2's 4x GELU MLP (d_ff 2048, biases), context 512,
    # GPT-2's vocabulary, output head tied to the embedding as in GPT-2. Hamner's block keeps its RMSNorm and
    # RoPE (no learned positions): 50,926,592 parameters.
    "tinygpt-50m": HamnerConfig(vocab_size=50257, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=8,
                                intermediate_size=2048, max_seq_len=512, tokenizer=GPT2_TOKENIZER, mlp="gelu"),
    # The speedrun recipe's model (bench/speedrun.py, curriculum `speedrun`): v3-50m's width, depth, heads and
    # vocabulary with the nanoGPT speedrun's architecture changes: RMSNorm on queries and keys, a 4x ReLU² MLP,
    # value embeddings (two tables: layers 0-1 and 6-7), U-net skips and logits soft-capped at 15.
    # 59,778,060 parameters: the two tables (6,291,456 each) are nearly all of the difference from v3-50m.
    "speedrun": HamnerConfig(vocab_size=49152, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=2,
                             intermediate_size=2048, max_seq_len=1024, tokenizer=COSMO2_TOKENIZER, **SPEEDRUN),
    # Its CPU twin, the demo preset's shape (byte-level, 4 layers of width 128; one value-embedding table):
    # 771,526 parameters.
    "speedrun-demo": HamnerConfig(vocab_size=257, hidden_size=128, n_layers=4, n_heads=4, n_kv_heads=2,
                                  intermediate_size=512, max_seq_len=256, tokenizer="bytes",
                                  **(SPEEDRUN | {"value_embeddings": 1})),
}


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list[str]": (list,), "None": (),
}


def load_model_file(path: str | Path, base: HamnerConfig) -> HamnerConfig:
    """`base` with the fields a TOML model file sets (any HamnerConfig field, e.g. mixer = "swa", window = 64).

    Every mistake is a ConfigError of one line naming the file and the field.
    """
    where = f"model file {path}"
    return with_fields(base, read_toml(Path(path), where, ConfigError), where, ConfigError)


def with_fields(base: HamnerConfig, fields: Any, where: str, error: type[HamnerError]) -> HamnerConfig:
    """`base` with `fields` (a TOML table of HamnerConfig fields) applied; an unknown field, a value of the
    wrong type or a config that does not hold together raises `error` in one line naming `where` and the field."""
    types = {f.name: str(f.type) for f in dataclasses.fields(HamnerConfig)}
    table = TomlTable(fields, where, types, error)
    for name in fields:
        table.typed(name, tuple(t for part in types[name].split(" | ") for t in _FIELD_TYPES[part]), types[name])
    try:
        return dataclasses.replace(base, **fields)
    except ConfigError as exc:  # the config's own checks; `where` names the file or spec entry
        raise error(f"{where}: {exc}") from None


def model_config(name: str) -> HamnerConfig:
    """A fresh copy of the preset called `name`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
