"""Rotary position embedding on q and k as one fused Triton kernel with autograd.

Rotate-half convention (element i pairs with i + D/2), the same function as Llama's / Hugging
Face's `apply_rotary_pos_emb`, or with `interleaved` element 2i pairs with 2i + 1 (GPT-J's,
Meta's original), on the flash-attn layout q [B, T, Hq, D], k [B, T, Hkv, D]. One
program per token rotates every q head and every k head with that token's cos/sin row, so q and
k (any head counts) share one launch and one read of the tables. The backward is the inverse
rotation: the same kernel with sin negated. Registered as a `hamner::` custom op so
torch.compile traces it without graph breaks; CPU tensors outside the interpreter take
`kernels.reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from hamner.kernels import dispatch, reference
from hamner.kernels.reference import rope_cache
from hamner.kernels.triton_utils import num_warps

__all__ = ["apply_rope", "rope_cache"]


@triton.jit
def _rotate_heads(
    X, sxb, sxt, sxh, Y, b, t, seq_len, n_heads, cos, sin,
    HALF: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Rotate all heads of token (b, t) of X into the contiguous [B, T, H, 2 * HALF] output Y."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < n_heads) & (dims < HALF)
    if INTERLEAVED:  # pair i is elements (2i, 2i + 1)
        first, partner = 2 * dims, 1
    else:  # pair i is elements (i, i + HALF)
        first, partner = dims, HALF
    src = X + b * sxb + t * sxt + heads * sxh + first
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + partner, mask=mask, other=0.0).to(tl.float32)
    dst = Y + ((b * seq_len + t) * n_heads + heads) * (2 * HALF) + first
    tl.store(dst, x1 * cos - x2 * sin, mask=mask)
    tl.store(dst + partner, x2 * cos + x1 * sin, mask=mask)


@triton.jit
def _rope_kernel(
    Q, sqb, sqt, sqh, K, skb, skt, skh, QO, KO, COS, cos_row_stride, SIN, sin_row_stride,
    seq_len, n_q_heads, n_k_heads,
    INVERSE: tl.constexpr, HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    b = token // seq_len
    t = token % seq_len
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HALF
    cos = tl.load(COS + t * cos_row_stride + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(SIN + t * sin_row_stride + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    if INVERSE:
        sin = -sin
    _rotate_heads(Q, sqb, sqt, sqh, QO, b, t, seq_len, n_q_heads, cos, sin, HALF, INTERLEAVED, BLOCK_HQ, BLOCK_D)
    _rotate_heads(K, skb, skt, skh, KO, b, t, seq_len, n_k_heads, cos, sin, HALF, INTERLEAVED, BLOCK_HK, BLOCK_D)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("hamner::rope", mutates_args=())
def _rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by the angles of cos/sin rows 0..T-1 (by minus those angles when `inverse`)."""
    q, k = _unit_last_stride(q), _unit_last_stride(k)
    cos, sin = _unit_last_stride(cos), _unit_last_stride(sin)
    batch, seq_len, n_q_heads, head_dim = q.shape
    n_k_heads = k.shape[2]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    block_d = triton.next_power_of_2(head_dim // 2)
    block_hq, block_hk = triton.next_power_of_2(n_q_heads), triton.next_power_of_2(n_k_heads)
    _rope_kernel[(batch * seq_len,)](
        q, q.stride(0), q.stride(1), q.stride(2), k, k.stride(0), k.stride(1), k.stride(2),
        q_out, k_out, cos, cos.stride(0), sin, sin.stride(0), seq_len, n_q_heads, n_k_heads,
        INVERSE=inverse, HALF=head_dim // 2, INTERLEAVED=interleaved,
        BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_D=block_d,
        num_warps=num_warps(block_hq * block_d),
    )
    dispatch.record_launch("rope")
    return q_out, k_out


@_rope.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rope_setup(ctx, inputs, output) -> None:
    _, _, cos, sin, ctx.inverse, ctx.interleaved = inputs
    ctx.save_for_backward(cos, sin)


def _rope_backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
    cos, sin = ctx.saved_tensors
    dq_in, dk_in = _rope(dq, dk, cos, sin, not ctx.inverse, ctx.interleaved)
    return dq_in, dk_in, None, None, None, None


_rope.register_autograd(_rope_backward, setup_context=_rope_setup)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding on q [B, T, Hq, D] and k [B, T, Hkv, D]: element i pairs with i + D/2
    (rotate-half, as Llama), or with `interleaved` element 2i with 2i + 1 (as GPT-J).

    cos/sin are `rope_cache` tables [>= T, D/2]; row t is the position of token t, so cached
    decoding passes the tables sliced from the first new position.
    """
    if not dispatch.use_triton(q):
        return reference.apply_rope(q, k, cos, sin, interleaved=interleaved)
    seq_len, half = q.shape[1], q.shape[-1] // 2
    if q.shape[-1] % 2 or k.shape[-1] != q.shape[-1] or k.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"apply_rope needs q [B, T, Hq, D] and k [B, T, Hkv, D] with even D, got {q.shape}, {k.shape}"
        )
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] < seq_len or cos.shape[1] != half:
        raise ValueError(f"apply_rope needs cos/sin [>= {seq_len}, {half}], got {cos.shape}, {sin.shape}")
    return _rope(q, k, cos, sin, False, interleaved)
