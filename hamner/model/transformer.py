"""The Hamner model: a Llama-style decoder built only from the ops in `kernels`.

Token embedding (tied with the output head unless `tie_embeddings` is off) -> n_layers pre-norm blocks
-> final RMSNorm -> output head, whose logits are soft-capped when `logit_softcap` is set.
Each block is a token mixer then an MLP, both chosen by name in the config (`hamner.model.mixers`,
`hamner.model.mlps`); the default, attention (fused QKV projection, grouped-query heads, RoPE) and a
SwiGLU MLP (gate and up fused in one projection), is the Llama block, with no biases. Every
residual add is fused into the next RMSNorm through `kernels.add_rms_norm`: a block takes the
residual stream `x` and the previous sublayer's output `delta` that has not been added yet, and
hands on the same pair.

The state_dict of the Llama block has stable names and layout (checkpoints and the Hugging Face
exporter rely on them; the attention parameter holds its q/k rows in another order in memory, see
`hamner.model.mixers.attention`):
  embed.weight                      [V, C]            also the output head when tied
  lm_head.weight                    [V, C]            the output head when not tied (tie_embeddings = false)
  layers.{i}.attn_norm.weight       [C]
  layers.{i}.attn.qkv.weight        [(Hq + 2 Hkv) D, C] rows: q, then k, then v
  layers.{i}.attn.out.weight        [C, Hq D]
  layers.{i}.mlp_norm.weight        [C]
  layers.{i}.mlp.gate_up.weight     [2 I, C]          rows: gate, then up
  layers.{i}.mlp.down.weight        [C, I]
  norm.weight                       [C]
Other mixers and MLPs keep the `attn` / `mlp` prefixes; several mixers in one layer sit at
`layers.{i}.attn.{mixer name}`. The options add (each only when on):
  layers.{i}.attn.qk_norm_weight    [D]               qk_norm (hamner.model.mixers.attention)
  value_embeds.{j}.weight           [V, Hkv D]        value_embeddings = N, j < N
  layers.{i}.attn.value_lambdas     [2]               the layers that take a value embedding
  skip_weights                      [n_layers // 2]   skip = "unet"

U-net skips (`skip = "unet"`, modded-nanogpt's U-net by @brendanh0gan, Keller Jordan et al. 2024, records of
Nov. 2024): with h_i the output (residual stream) of block i and n = n_layers // 2, block n + j's input is

    x <- x + w_j h_{n-1-j},   j = 0 .. n - 1,   w_j learnt, 1 at init (`skip_weights`, torch.ones as in the source),

so the last block takes the first block's output, the middle ones their neighbours' (an odd stack's last block
takes none). The weighted skip is added to the residual stream; the pending sublayer output joins it in the
block's fused add + RMSNorm as always.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hamner import kernels
from hamner.errors import ConfigError, CurriculumError
from hamner.model.config import HamnerConfig
from hamner.model.decoding_cache import DecodingCache
from hamner.model.mixers import MIXERS, DecodingState
from hamner.model.mixers.parallel import ParallelMixers
from hamner.model.mlps import MLPS
from hamner.model.packing import document_positions


class RMSNorm(nn.Module):
    """Holds the weight of one RMSNorm; the math lives in `kernels` (plain or fused with a residual add)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (normed, new residual stream): adds `delta` into `x` first when given."""
        if delta is None:
            return kernels.rms_norm(x, self.weight, self.eps), x
        return kernels.add_rms_norm(delta, x, self.weight, self.eps)


def build_mixer(name: str, config: HamnerConfig, layer_index: int) -> nn.Module:
    """The mixer `name` for layer `layer_index`; several names joined by "+" give a `ParallelMixers`."""
    parts = name.split("+")
    if len(parts) == 1:
        return MIXERS[name](config, layer_index)
    return ParallelMixers({part: MIXERS[part](config, layer_index) for part in parts})


def build_mlp(name: str, config: HamnerConfig, layer_index: int) -> nn.Module:
    """The MLP `name` ("swiglu", "moe") for layer `layer_index`."""
    return MLPS[name](config, layer_index)


class Block(nn.Module):
    """Pre-norm block working on (residual stream, pending sublayer output): token mixer, then MLP."""

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        spec = config.layer_mixer(layer_index)
        self.attn = build_mixer(spec, config, layer_index)
        mixers = dict(self.attn) if isinstance(self.attn, ParallelMixers) else {spec: self.attn}
        # Why this block refuses segment_ids (the first of its mixers that cannot keep documents apart), or None.
        self.documents_refusal = next(
            (f"mixer {name!r} cannot keep packed documents apart: {mixer.mixes_documents_because}"
             for name, mixer in mixers.items() if not mixer.keeps_documents_apart), None)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = build_mlp(config.mlp, config, layer_index)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        state: DecodingState | None = None,
        segment_ids: torch.Tensor | None = None,
        value_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`state` is the mixer's decoding state (None outside cached decoding); `segment_ids` the
        document of every position of a packed training row (None: one document), refused (ValueError)
        when a mixer of the block cannot keep the documents apart; `value_embedding` the layer's
        value-embedding lookup, for an attention mixer (None: the layer has none)."""
        if segment_ids is not None and self.documents_refusal is not None:
            raise ConfigError(self.documents_refusal)
        h, x = self.attn_norm(x, delta)
        extra = {} if value_embedding is None else {"value_embedding": value_embedding}
        h, x = self.mlp_norm(x, self.attn(h, cos, sin, state, segment_ids=segment_ids, **extra))
        return x, self.mlp(h)


class HamnerModel(nn.Module):
    """Llama-style decoder; `forward(idx, targets)` gives the loss, `forward(idx)` the logits."""

    def __init__(self, config: HamnerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        kv_dim = config.n_kv_heads * config.head_dim
        # Value embeddings (hamner.model.mixers.attention), only when config.value_embeddings > 0.
        self.value_embeds = nn.ModuleList(nn.Embedding(config.vocab_size, kv_dim)
                                          for _ in range(config.value_embeddings))
        # U-net skip weights, one per skip (skip = "unet" only).
        self.skip_weights = nn.Parameter(torch.ones(config.n_layers // 2)) if config.skip == "unet" else None
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # RoPE cos/sin [max_seq_len, head_dim / 2], float32 whatever the model's dtype; not saved.
        self.register_buffer("rope_cos", torch.empty(config.max_seq_len, config.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(config.max_seq_len, config.head_dim // 2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for every Linear and embedding (value embeddings too), ones for norms and U-net
        skip weights, fresh RoPE tables.

        With `scale_residual_init`, the projections that write into the residual stream (the
        mixers' `out`, the MLP's `down`) get std init_std / sqrt(2 n_layers). An untied model
        (`tie_embeddings` off) starts its output head and those projections at zero instead. Mixers and MLPs
        with other parameters initialise them in their own `init_weights()`. Call this after
        `to_empty()` when the model was built on the meta device (or load a state dict).
        """
        std, residual_std = self.config.init_std, self.config.residual_init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.endswith((".out", "mlp.down"))
                if self.config.zero_init_outputs and (is_residual_out or module is self.lm_head):
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif module is not self and hasattr(module, "init_weights"):
                module.init_weights()
        if self.skip_weights is not None:
            nn.init.ones_(self.skip_weights)
        self._refresh_rope()

    def _refresh_rope(self) -> None:
        """(Re)compute the float32 RoPE tables on the device the buffers are on."""
        device = self.rope_cos.device
        if device.type == "meta":
            return
        c = self.config
        self.rope_cos, self.rope_sin = kernels.rope_cache(c.max_seq_len, c.head_dim, c.rope_theta, device=device)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> HamnerModel:
        """Every device move or cast (.to, .cuda, .bfloat16, to_empty) rebuilds the RoPE tables in float32."""
        super()._apply(fn, recurse)
        self._refresh_rope()
        return self

    def hidden_states(self, idx: torch.Tensor, *, cache: DecodingCache | None = None,
                      segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final normed hidden states [B, T, C] for token ids `idx` [B, T].

        With `cache`, `idx` holds the next tokens after the cached ones: every mixer absorbs them
        into its decoding state, RoPE uses the rows from the cache position on, and the position advances.
        With `segment_ids` [B, T] (document packing, see hamner.model.packing), each document attends only
        to itself and its RoPE positions start at 0; only mixers that `keeps_documents_apart` accept it.
        """
        T = idx.shape[1]
        start = 0 if cache is None else cache.pos
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids are for training rows; cached decoding has one document")
            positions = document_positions(segment_ids)
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        else:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x, delta = self.embed(idx), None
        checkpointing = (self.config.activation_checkpointing and self.training and cache is None
                         and torch.is_grad_enabled())
        value_embeds = [table(idx) for table in self.value_embeds]
        skips: list[torch.Tensor] = []
        n_skips = 0 if self.skip_weights is None else len(self.skip_weights)
        for i, layer in enumerate(self.layers):
            if n_skips <= i < 2 * n_skips:  # the mirrored second half: block n + j takes block n - 1 - j's output
                x = x + self.skip_weights[i - n_skips] * skips.pop()
            table = self.config.value_table(i)
            ve = None if table is None else value_embeds[table]
            if checkpointing:
                x, delta = checkpoint(layer, x, delta, cos, sin, None, segment_ids, ve, use_reentrant=False)
            else:
                x, delta = layer(x, delta, cos, sin, None if cache is None else cache.states[i], segment_ids, ve)
            if i < n_skips:
                skips.append(x + delta)
        if cache is not None:
            cache.advance(T)
        return self.norm(x, delta)[0]

    @property
    def head_weight(self) -> torch.Tensor:
        """The output head's weight [V, C]: the embedding's when tied, else `lm_head`'s."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the vocabulary for hidden states [..., C], soft-capped when `logit_softcap` is set.

        Every reader of logits (generation, cached decoding, evaluation) comes here, so they all see the
        logits the loss was trained on."""
        return kernels.reference.soft_cap(F.linear(hidden, self.head_weight).float(), self.config.logit_softcap)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: DecodingCache | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss (scalar) when `targets` is given, else float32 logits [B, T, V].

        `targets[b, t]` is the token that follows `idx[b, t]` (-100 = ignored): callers cut
        windows of T + 1 tokens into idx = w[:-1], targets = w[1:]; the model never shifts.
        The loss goes through `kernels.fused_linear_cross_entropy`, so logits are never materialised.
        A batch with no counted target (all -100) gives 0, not the NaN of an empty mean, and a zero gradient.
        In training mode it includes the auxiliary losses of the mixers and MLPs (`aux_loss`).
        `segment_ids`: see `hidden_states`.
        """
        hidden = self.hidden_states(idx, cache=cache, segment_ids=segment_ids)
        if targets is None:
            return self.logits(hidden)
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        hidden, weight = hidden.reshape(-1, hidden.shape[-1]), self.head_weight
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            # A custom op is not autocast: cast here so the output matmuls run in the autocast dtype.
            dtype = torch.get_autocast_dtype(device_type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        targets = targets.reshape(-1)
        loss = kernels.fused_linear_cross_entropy(hidden, weight, targets, ignore_index=-100,
                                                  softcap=self.config.logit_softcap)
        # A batch whose targets are all ignored (e.g. a chat window without a reply) counts nothing: its mean is
        # 0 / 0, so its loss is 0. Its gradient is already zero; `where` keeps it so without a host sync.
        loss = torch.where((targets != -100).any(), loss, torch.zeros_like(loss))
        if self.training:
            for aux in self.aux_losses():
                loss = loss + aux
        return loss

    def keeps_documents_apart(self) -> bool:
        """Whether every layer's mixer can keep packed documents apart (`segment_ids`)."""
        return all(layer.documents_refusal is None for layer in self.layers)

    def aux_losses(self) -> list[torch.Tensor]:
        """The auxiliary losses (MoE balance and z-loss, ...) the mixers and MLPs set in the last training forward."""
        return [m.aux_loss for m in self.modules() if getattr(m, "aux_loss", None) is not None]

    def expert_load(self) -> torch.Tensor | None:
        """[MoE layers, experts]: each expert's fraction of its layer's token assignments in the last forward.

        None without MoE layers. 1 / n_experts everywhere is perfect balance.
        """
        loads = [m.load for m in self.modules() if hasattr(m, "num_active_parameters")]
        return torch.stack(loads) if loads else None

    def knob_names(self) -> list[str]:
        """The knobs a curriculum stage may set on this model (declared by its mixers as `KNOBS`), sorted."""
        return sorted({name for m in self.modules() for name in getattr(m, "KNOBS", ())})

    def _knob_holders(self, name: str, value: float | tuple[float, ...]) -> list[tuple[nn.Module, float]]:
        """(module, its value) for every module declaring knob `name`; a tuple gives one value per layer."""
        per_layer = isinstance(value, (tuple, list))
        if per_layer and len(value) != len(self.layers):
            raise CurriculumError(f"knob {name!r} has {len(value)} values, one per layer, but the model has "
                             f"{len(self.layers)} layers")
        holders = [(m, value[i] if per_layer else value) for i, layer in enumerate(self.layers)
                   for m in layer.modules() if name in getattr(m, "KNOBS", ())]
        if not holders:
            known = ", ".join(self.knob_names()) or "none"
            raise CurriculumError(f"the model has no knob {name!r} (its knobs: {known})")
        for module, one in holders:
            module.check_knob(name, one)
        return holders

    def check_knob(self, name: str, value: float | tuple[float, ...]) -> None:
        """ValueError (one line) unless `set_knob(name, value)` would be accepted."""
        self._knob_holders(name, value)

    def set_knob(self, name: str, value: float | tuple[float, ...]) -> None:
        """Set knob `name` (e.g. "plasticity") on every module that declares it: one value for all, or a
        tuple of one value per layer (layers without the knob skip theirs)."""
        for module, one in self._knob_holders(name, value):
            module.set_knob(name, one)

    def num_parameters(self, active: bool = False) -> int:
        """Number of parameters, the tied embedding/output weight counted once (an untied head on its own).

        With `active`, only those one token uses: an MoE layer counts its router and top-k experts.
        """
        total = sum(p.numel() for p in self.parameters())
        if active:
            for m in self.modules():
                if hasattr(m, "num_active_parameters"):
                    total += m.num_active_parameters() - sum(p.numel() for p in m.parameters())
        return total

    def describe_parameters(self) -> str:
        """E.g. "51,234,816 parameters", with the count active per token when it differs (MoE)."""
        total, active = self.num_parameters(), self.num_parameters(active=True)
        return f"{total:,} parameters" + (f" ({active:,} active per token)" if active != total else "")

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), for MFU.

        6 x (active matmul parameters: every Linear, expert and the output head, not the norms, nor the
        value-embedding tables and an untied embedding, which are looked up) plus
        the attention score and value matmuls, 12 x n_layers x n_heads x head_dim x seq_len (the
        PaLM-paper estimate; it does not halve for the causal mask, nor shrink for a window).
        """
        c = self.config
        vector_params = sum(p.numel() for p in self.parameters() if p.dim() < 2)
        table_params = sum(p.numel() for p in self.value_embeds.parameters())
        lookup_params = table_params + (0 if self.lm_head is None else self.embed.weight.numel())
        matmul_params = self.num_parameters(active=True) - vector_params - lookup_params
        return 6.0 * matmul_params + 12.0 * c.n_layers * c.n_heads * c.head_dim * seq_len

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: weight decay on 2-D matrices (all Linears, the embedding and an untied head), none
        on norms, scalars and value-embedding tables.

        The embedding decays because it is (or, untied, stands beside) the output projection, a matrix like the
        others. A value embedding is a lookup table only, and lookup tables do not decay (minGPT's rule,
        nn.Embedding on its no-decay list; the speedrun's embeddings run on Adam without decay).
        """
        tables = {id(p) for p in self.value_embeds.parameters()}
        decay = [p for p in self.parameters() if p.dim() >= 2 and id(p) not in tables]
        no_decay = [p for p in self.parameters() if p.dim() < 2 or id(p) in tables]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def build_model(config: HamnerConfig) -> HamnerModel:
    """`HamnerModel(config)`, with a model too large for this machine's memory refused as a one-line
    ConfigError naming its sizes (rather than the allocator's dump of the bytes it tried to get)."""
    try:
        return HamnerModel(config)
    except (RuntimeError, MemoryError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ConfigError(f"the model does not fit in memory (vocab_size {config.vocab_size}, hidden_size "
                          f"{config.hidden_size}, intermediate_size {config.intermediate_size}, n_layers "
                          f"{config.n_layers}); choose smaller sizes") from None
