"""Plain PyTorch versions of every op in `kernels`, with the same signatures.

They are the ground truth for the kernel tests (run them in float64) and the path CPU tensors
take outside the Triton interpreter. Math is done in at least float32 and cast back, as the
kernels do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Llama RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), normalised in fp32, output in x's dtype."""
    xf = x.to(_compute_dtype(x.dtype))
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight * normed).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add followed by RMSNorm; returns (normed, summed)."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, computed in fp32, output in gate's dtype."""
    dtype = _compute_dtype(gate.dtype)
    return (F.silu(gate.to(dtype)) * up.to(dtype)).to(gate.dtype)


def rope_cache(
    seq_len: int, head_dim: int, theta: float = 10000.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [seq_len, head_dim // 2] float32; angle[t, i] = t * theta^(-2i/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)
    return angles.cos().float(), angles.sin().float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x rotated by the angles of its positions: halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    half = x.shape[-1] // 2
    xf = x.to(_compute_dtype(x.dtype))
    cos = cos[: x.shape[1]].to(xf.dtype)[None, :, None, :]
    sin = sin[: x.shape[1]].to(xf.dtype)[None, :, None, :]
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.empty_like(xf)
    first, second = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=first).sub_(x2 * sin)
    torch.mul(x2, cos, out=second).addcmul_(x1, sin)
    return out.to(x.dtype)


class _Rope(torch.autograd.Function):
    """RoPE with its own backward: the gradient of a rotation is the inverse rotation (sin negated).
    Written out so a CPU step does no concatenation and no zero-filled gradients of slices."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(dq, cos, -sin), _rotate(dk, cos, -sin), None, None


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding, rotate-half convention, on q [B, T, Hq, D] and k [B, T, Hkv, D]."""
    return _Rope.apply(q, k, cos, sin)


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of hidden @ weight.T against targets over non-ignored rows (logits materialised)."""
    logits = hidden @ weight.T
    return F.cross_entropy(logits.to(_compute_dtype(logits.dtype)), targets, ignore_index=ignore_index)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Grouped-query softmax attention on [B, T, H, D] tensors; query head i reads KV head i // (Hq // Hkv)."""
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.repeat_interleave(group, dim=2).transpose(1, 2)
    vh = v.repeat_interleave(group, dim=2).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)).to(_compute_dtype(q.dtype)) / math.sqrt(q.shape[-1])
    if causal:
        tq, tk = scores.shape[-2], scores.shape[-1]
        # Queries are the last tq positions of the tk keys (matters for cached decoding).
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1).to(v.dtype)
    return (probs @ vh).transpose(1, 2)
