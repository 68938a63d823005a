"""The Hamner model: a Llama-style decoder built only from the ops in `kernels`.

Token embedding (tied with the output head) -> n_layers pre-norm blocks -> final RMSNorm.
Each block is attention (fused QKV projection, grouped-query heads, RoPE) then a SwiGLU MLP
(gate and up fused in one projection), with no biases. Every residual add is fused into the
next RMSNorm through `kernels.add_rms_norm`: a block takes the residual stream `x` and the
previous sublayer's output `delta` that has not been added yet, and hands on the same pair.

Parameter names are stable (a Hugging Face Llama exporter relies on them):
  embed.weight                      [V, C]            also the output head
  layers.{i}.attn_norm.weight       [C]
  layers.{i}.attn.qkv.weight        [(Hq + 2 Hkv) D, C] rows: q, then k, then v
  layers.{i}.attn.out.weight        [C, Hq D]
  layers.{i}.mlp_norm.weight        [C]
  layers.{i}.mlp.gate_up.weight     [2 I, C]          rows: gate, then up
  layers.{i}.mlp.down.weight        [C, I]
  norm.weight                       [C]
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hamner import kernels
from hamner.config import HamnerConfig
from hamner.kv_cache import KVCache
from hamner.packing import document_positions


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


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE; q, k, v come from one fused projection."""

    def __init__(self, config: HamnerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, q_dim + 2 * kv_dim, bias=False)  # rows: q, k, v
        self.out = nn.Linear(q_dim, config.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, layer: int,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split((q_dim, kv_dim, kv_dim), dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if cos.dim() == 3:  # a position per token ([B, T, D/2]): rotate the B x T tokens as one sequence
            q, k = kernels.apply_rope(q.reshape(1, B * T, self.n_heads, self.head_dim),
                                      k.reshape(1, B * T, self.n_kv_heads, self.head_dim),
                                      cos.reshape(B * T, -1), sin.reshape(B * T, -1))
            q, k = q.view(B, T, self.n_heads, self.head_dim), k.view(B, T, self.n_kv_heads, self.head_dim)
        else:
            q, k = kernels.apply_rope(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # A single new query sees every cached key; otherwise queries are the last T of the keys.
        y = kernels.attention(q, k, v, causal=T > 1, segment_ids=segment_ids)
        return self.out(y.reshape(B, T, q_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), gate and up fused in one projection."""

    def __init__(self, config: HamnerConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)  # rows: gate, up
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # views of the fused output
        return self.down(kernels.swiglu(gate, up))


class Block(nn.Module):
    """Pre-norm transformer block working on (residual stream, pending sublayer output)."""

    def __init__(self, config: HamnerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, x = self.attn_norm(x, delta)
        h, x = self.mlp_norm(x, self.attn(h, cos, sin, cache, layer, segment_ids))
        return x, self.mlp(h)


class HamnerModel(nn.Module):
    """Llama-style decoder; `forward(idx, targets)` gives the loss, `forward(idx)` the logits."""

    def __init__(self, config: HamnerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        # RoPE cos/sin [max_seq_len, head_dim / 2], float32 whatever the model's dtype; not saved.
        self.register_buffer("rope_cos", torch.empty(config.max_seq_len, config.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(config.max_seq_len, config.head_dim // 2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for every Linear and the embedding, ones for norms, fresh RoPE tables.

        With `scale_residual_init`, the projections that write into the residual stream
        (attn.out, mlp.down) get std init_std / sqrt(2 n_layers). Call this after
        `to_empty()` when the model was built on the meta device (or load a state dict).
        """
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers) if self.config.scale_residual_init else std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.endswith(("attn.out", "mlp.down"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
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

    def hidden_states(self, idx: torch.Tensor, *, cache: KVCache | None = None,
                      segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final normed hidden states [B, T, C] for token ids `idx` [B, T].

        With `cache`, `idx` holds the next tokens after the cached ones: their K/V are written into
        the cache at its position, RoPE uses the rows from that position on, and the position advances.
        With `segment_ids` [B, T] (document packing, see hamner.packing), each document attends only
        to itself and its RoPE positions start at 0.
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
        for i, layer in enumerate(self.layers):
            if checkpointing:
                x, delta = checkpoint(layer, x, delta, cos, sin, None, i, segment_ids, use_reentrant=False)
            else:
                x, delta = layer(x, delta, cos, sin, cache, i, segment_ids)
        if cache is not None:
            cache.advance(T)
        return self.norm(x, delta)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the vocabulary for hidden states [..., C] (tied output head)."""
        return F.linear(hidden, self.embed.weight).float()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss (scalar) when `targets` is given, else float32 logits [B, T, V].

        `targets[b, t]` is the token that follows `idx[b, t]` (-100 = ignored): callers cut
        windows of T + 1 tokens into idx = w[:-1], targets = w[1:]; the model never shifts.
        The loss is the mean over the targets that are not ignored, through
        `kernels.fused_linear_cross_entropy`, so logits are never materialised.
        `segment_ids`: see `hidden_states`.
        """
        hidden = self.hidden_states(idx, cache=cache, segment_ids=segment_ids)
        if targets is None:
            return self.logits(hidden)
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        hidden, weight = hidden.reshape(-1, hidden.shape[-1]), self.embed.weight
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            # A custom op is not autocast: cast here so the output matmuls run in the autocast dtype.
            dtype = torch.get_autocast_dtype(device_type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        return kernels.fused_linear_cross_entropy(hidden, weight, targets.reshape(-1), ignore_index=-100)

    def num_parameters(self) -> int:
        """Number of parameters, the tied embedding/output weight counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), for MFU.

        6 x (matmul parameters: every Linear plus the output head, not the norms) plus the
        attention score and value matmuls, 12 x n_layers x n_heads x head_dim x seq_len (the
        PaLM-paper estimate; it does not halve for the causal mask).
        """
        c = self.config
        norm_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, RMSNorm))
        matmul_params = self.num_parameters() - norm_params
        return 6.0 * matmul_params + 12.0 * c.n_layers * c.n_heads * c.head_dim * seq_len

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: weight decay on 2-D matrices (all Linears and the tied embedding), none on norms.

        The embedding decays because it is also the output projection, a matrix like the others.
        """
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
