"""Causal grouped-query softmax attention with RoPE, full or over a sliding window.

    y_t = sum_{s in S_t} softmax_s(q_t . k_s / sqrt(D)) v_s,   S_t = {0..t} (full) or {t-W+1..t} (window W)

The Llama attention (Touvron et al. 2023, "LLaMA"); the sliding window as in Beltagy et al. 2020
("Longformer") and Mistral 7B (Jiang et al. 2023). Decoding keeps the keys and values seen so far:
all of them for full attention, only the last W - 1 (all a new query still sees besides its own)
for the window, so the window's cache stays bounded however long the text.

The sliding window's knob "window" narrows it at run time, W_now in 1..W (a curriculum's window warm-up, as in
the modded-nanogpt speedrun, Keller Jordan et al. 2024): the model's `window` W is the largest it may reach.
W_now lives in a 0-d integer buffer, so checkpoints carry it, a resumed or loaded model attends as it did,
and the attention takes it as a tensor (see hamner.kernels.attention_dispatch: changing it never recompiles
a compiled model). At W_now = W the attention runs exactly as without the knob.

Two options (config fields, off by default):

`qk_norm`: queries and keys are RMS-normed per head before RoPE, q_h <- w * q_h / rms(q_h) and
k_h <- w * k_h / rms(k_h), with one learnt weight w [D] (ones at init) shared by q and k, so one RMSNorm
launch covers the rows of both (Dehghani et al. 2023, "Scaling Vision Transformers to 22B Parameters";
the modded-nanogpt speedrun norms them without a weight, OLMo-2 and Gemma-3 keep a weight for each).

`value_embeddings = N`: layer i < N and layer n_layers - N + i mix table i of N extra token embeddings
[V, Hkv D] into their values,

    v_t <- lambda_0 v_t + lambda_1 ve_i[idx_t],   (lambda_0, lambda_1) learnt, (0.5, 0.5) at init,

modded-nanogpt's value embeddings (Keller Jordan et al. 2024, the NanoGPT speedrun records of
Nov.-Dec. 2024: `v = self.lambdas[0] * v + self.lambdas[1] * ve`, tables laid out "012 ... 012" over the
layers). The tables belong to the model (`HamnerModel.value_embeds`), the lambdas to the layer; the
decoding cache keeps the mixed values, so decoding needs only the new tokens' lookups.

RoPE pairs element i of a head with element i + D/2 (Llama's rotate-half), and that is the order
`state_dict()` and `load_state_dict()` use (checkpoints, the Hugging Face export). The parameter
itself holds each q and k head's rows in pair order, (0, D/2, 1, D/2 + 1, ...), so the projection
puts every pair side by side and RoPE is one complex multiply: one pass over q and k instead of
three on a CPU, and no reordering of the weight at every step. Scores are dot products within a
head, unchanged (up to rounding) when q and k are reordered alike, so the output is the
rotate-half attention's; the decoding cache holds the reordered keys. Optimizer state follows the
parameter, in pair order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from hamner import kernels
from hamner.errors import CurriculumError
from hamner.model.checks import NoSettings
from hamner.model.mixers.settings import SlidingWindowSettings
from hamner.model.mixers.shared import KVState

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


def pair_order(rotated_heads: int, head_dim: int, rows: int) -> torch.Tensor:
    """Row order taking a rotate-half projection [q heads; k heads; v] to pair order: in each of the
    first `rotated_heads` heads, rows (0, D/2, 1, D/2 + 1, ...); the remaining rows (v) unchanged."""
    half, cpu = head_dim // 2, torch.device("cpu")  # on the CPU also inside a `with torch.device("meta")` build
    zipped = torch.stack((torch.arange(half, device=cpu), torch.arange(half, device=cpu) + half), dim=-1).reshape(-1)
    rotated = (torch.arange(rotated_heads, device=cpu)[:, None] * head_dim + zipped).reshape(-1)
    return torch.cat((rotated, torch.arange(rotated_heads * head_dim, rows, device=cpu)))


def _state_dict_in_rotate_half(module: Attention, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    key = prefix + "qkv.weight"
    if key in state_dict:
        state_dict[key] = module.to_rotate_half(state_dict[key].detach())
    key = prefix + "qk_norm_weight"
    if key in state_dict:
        weight = state_dict[key].detach()
        state_dict[key] = weight.index_select(0, module.head_pair_order.argsort().to(weight.device))


def _load_in_pair_order(module: Attention, state_dict: dict, prefix: str, *args: object) -> None:
    key = prefix + "qkv.weight"
    if key in state_dict and state_dict[key].shape == module.qkv.weight.shape:  # else load_state_dict names the misfit
        state_dict[key] = module.to_pair_order(state_dict[key])
    key = prefix + "qk_norm_weight"
    if key in state_dict and state_dict[key].shape == (module.head_dim,):
        state_dict[key] = state_dict[key].index_select(0, module.head_pair_order.to(state_dict[key].device))


class Attention(NoSettings, nn.Module):
    """Causal grouped-query self-attention with RoPE; q, k, v come from one fused projection."""

    keeps_documents_apart = True

    def __init__(self, config: HamnerConfig, layer_index: int, window: int | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.window = window
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, q_dim + 2 * kv_dim, bias=False)  # rows: q, k, v
        self.out = nn.Linear(q_dim, config.hidden_size, bias=False)
        self._pair_order = pair_order(self.n_heads + self.n_kv_heads, self.head_dim, self.qkv.out_features)
        self.head_pair_order = pair_order(1, self.head_dim, self.head_dim)  # one head's elements as q and k hold them
        self.norm_eps = config.norm_eps
        # qk_norm's weight [D], in pair order like the q and k rows it scales (saved in rotate-half order).
        self.qk_norm_weight = nn.Parameter(torch.ones(self.head_dim)) if config.qk_norm else None
        # (lambda_0, lambda_1) of a layer that mixes a value embedding into its values.
        has_table = config.value_table(layer_index) is not None
        self.value_lambdas = nn.Parameter(torch.full((2,), 0.5)) if has_table else None
        self.register_state_dict_post_hook(_state_dict_in_rotate_half)
        self.register_load_state_dict_pre_hook(_load_in_pair_order)

    @torch.no_grad()
    def init_weights(self) -> None:
        """qk_norm's weight ones, the value lambdas (0.5, 0.5) as modded-nanogpt starts them."""
        if self.qk_norm_weight is not None:
            nn.init.ones_(self.qk_norm_weight)
        if self.value_lambdas is not None:
            nn.init.constant_(self.value_lambdas, 0.5)

    def to_pair_order(self, rows: torch.Tensor) -> torch.Tensor:
        """`qkv.weight`-shaped rows in rotate-half order (as saved) put in the parameter's pair order."""
        return rows.index_select(0, self._pair_order.to(rows.device))

    def to_rotate_half(self, rows: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_pair_order`: rows as the parameter holds them, in the saved order."""
        return rows.index_select(0, self._pair_order.argsort().to(rows.device))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: KVState | None = None, segment_ids: torch.Tensor | None = None,
                value_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """As a `Mixer`'s; `value_embedding` [B, T, Hkv D], this layer's table looked up at the tokens of x,
        is given exactly when the layer has one (`value_embeddings`)."""
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qkv = self.qkv(x)
        if self.qk_norm_weight is None:
            q, k, v = qkv.split((q_dim, kv_dim, kv_dim), dim=-1)
            q = q.view(B, T, self.n_heads, self.head_dim)
            k = k.view(B, T, self.n_kv_heads, self.head_dim)
        else:  # the q and k heads side by side: one RMSNorm over the rows of both
            qk, v = qkv.split((q_dim + kv_dim, kv_dim), dim=-1)
            qk = kernels.rms_norm(qk.view(B, T, self.n_heads + self.n_kv_heads, self.head_dim),
                                  self.qk_norm_weight, self.norm_eps)
            q, k = qk.split((self.n_heads, self.n_kv_heads), dim=2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.value_lambdas is not None:
            lambdas, ve = self.value_lambdas.to(v.dtype), value_embedding.to(v.dtype)
            v = lambdas[0] * v + lambdas[1] * ve.view(B, T, self.n_kv_heads, self.head_dim)
        if cos.dim() == 3:  # a position per token ([B, T, D/2]): rotate the B x T tokens as one sequence
            q, k = kernels.apply_rope(q.reshape(1, B * T, self.n_heads, self.head_dim),
                                      k.reshape(1, B * T, self.n_kv_heads, self.head_dim),
                                      cos.reshape(B * T, -1), sin.reshape(B * T, -1), interleaved=True)
            q, k = q.view(B, T, self.n_heads, self.head_dim), k.view(B, T, self.n_kv_heads, self.head_dim)
        else:
            q, k = kernels.apply_rope(q, k, cos, sin, interleaved=True)
        if state is not None:
            k, v = state.append(k, v)
        # Queries are the last T positions of the keys.
        y = kernels.attention(q, k, v, causal=True, window=self.attention_window(), segment_ids=segment_ids)
        return self.out(y.reshape(B, T, q_dim))

    def attention_window(self) -> int | torch.Tensor | None:
        """The window the forward attends over: None (full attention) or the fixed window."""
        return self.window

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVState:
        head = (self.n_kv_heads, self.head_dim)
        return KVState.empty(batch_size, max_len, head, head, self.window, device, dtype)


def _fill_missing_window(module: SlidingWindowAttention, state_dict: dict, prefix: str, *args: object) -> None:
    """A state dict saved before the window knob existed attends over the whole window."""
    state_dict.setdefault(prefix + "current_window", torch.tensor(module.window))


def _follow_loaded_window(module: SlidingWindowAttention, incompatible_keys: object) -> None:
    if module.current_window.device.type != "meta":
        module.follow_buffer()


class SlidingWindowAttention(SlidingWindowSettings, Attention):
    """Attention where each query sees only the last `config.window` keys, itself included; knob "window"
    narrows that to W_now (module docstring)."""

    KNOBS = ("window",)

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__(config, layer_index, window=config.window)
        self.register_buffer("current_window", torch.tensor(config.window))  # W_now, carried in checkpoints
        # Host copies of W_now, so setting the knob and building decoding states never read the buffer back;
        # the forward reads only `narrowed` (a bool, so torch.compile guards on two values at most).
        self.window_now, self.narrowed = config.window, False
        self.register_load_state_dict_pre_hook(_fill_missing_window)
        self.register_load_state_dict_post_hook(_follow_loaded_window)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The whole window (also after a build on the meta device)."""
        self.current_window.fill_(self.window)
        self.window_now, self.narrowed = self.window, False

    def follow_buffer(self) -> None:
        """Set the host copies from the buffer (after it was filled or loaded)."""
        self.window_now = int(self.current_window)
        self.narrowed = self.window_now < self.window

    def attention_window(self) -> int | torch.Tensor:
        """The fixed window, or the buffer (a tensor) while the knob narrows it."""
        return self.current_window if self.narrowed else self.window

    def check_knob(self, name: str, value: float) -> None:
        """CurriculumError unless `name` is "window" and `value` a whole number in 1..window."""
        if name not in self.KNOBS:
            raise CurriculumError(f"unknown knob {name!r} for sliding-window attention (knobs: window)")
        if isinstance(value, bool) or value != int(value) or not 1 <= value <= self.window:
            raise CurriculumError(f"window must be a whole number in 1..{self.window} (the model's window is the "
                                  f"largest), got {value!r}")

    @torch.no_grad()
    def set_knob(self, name: str, value: float) -> None:
        """Set the knob `name` ("window": W_now in 1..window); setting the value it has writes nothing."""
        self.check_knob(name, value)
        if int(value) != self.window_now:
            self.current_window.fill_(int(value))
            self.window_now, self.narrowed = int(value), int(value) < self.window

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVState:
        head = (self.n_kv_heads, self.head_dim)
        return KVState.empty(batch_size, max_len, head, head, self.window_now, device, dtype)
