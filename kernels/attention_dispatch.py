"""Grouped-query attention: flash-attn's kernel on CUDA when installed, PyTorch SDPA otherwise.

Tensors use the flash-attn layout [B, T, H, D]; query head i reads KV head i // (Hq // Hkv).
With causal=True and fewer queries than keys (cached decoding), the queries are the LAST Tq
positions: query j sits at position Tk - Tq + j and sees keys 0..Tk - Tq + j. flash-attn aligns
the causal mask that way already; SDPA's is_causal aligns it to the start, so that case gets an
explicit mask. A `window` W limits each query to the last W keys up to itself: flash-attn's
`window_size=(W - 1, 0)`, or an SDPA band mask.

`differential_attention` (two softmax maps and their weighted difference) runs as attention
calls of the same backends, each map applied to both halves of the value width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hamner.kernels import dispatch
from hamner.kernels.reference import causal_mask


def _load_flash_attn():
    try:
        from flash_attn import flash_attn_func
    except (ImportError, OSError):  # not installed, or built against another torch/CUDA
        return None
    return flash_attn_func


_flash_attn_func = _load_flash_attn()

# flash-attn kernels take half precision only; fp32 CUDA tensors go through SDPA.
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def attention_backend() -> str:
    """The backend CUDA calls use: "flash-attn" when the package imports, else "sdpa".

    fp32 tensors, and every call inside `kernels.dispatch.reference_only()`, use SDPA regardless.
    """
    return "flash-attn" if _flash_attn_func is not None else "sdpa"


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int | None) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            "expected q [B, T, Hq, D] and k, v [B, T, Hkv, D], "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} need equal batch and head size, "
            "and Hq a multiple of Hkv"
        )
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(
            f"causal attention needs at most as many queries ({q.shape[1]}) as keys ({k.shape[1]})"
        )
    if window is not None and (not causal or window < 1):
        raise ValueError(f"a window needs causal attention and at least 1 key, got window={window}, causal={causal}")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor:
    n_queries, n_keys = q.shape[1], k.shape[1]
    banded = window is not None and window < n_keys
    # A single query at the end of the keys sees all of them (unless banded): no mask at all.
    mask = None
    if causal and (banded or 1 < n_queries < n_keys):
        mask = causal_mask(n_queries, n_keys, window, device=q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=causal and mask is None and n_queries == n_keys,
        # Only ask for GQA when heads differ, so plain multi-head attention keeps every SDPA backend.
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, window: int | None = None
) -> torch.Tensor:
    """Softmax attention of q [B, Tq, Hq, D] over k, v [B, Tk, Hkv, D]; returns [B, Tq, Hq, D].

    Scores are scaled by 1/sqrt(D). With causal=True, Tq <= Tk and the queries are the last Tq
    positions of the keys; with `window`, each query sees only the last `window` keys up to itself.
    """
    _check_shapes(q, k, v, causal, window)
    use_flash = _flash_attn_func is not None and q.is_cuda and q.dtype in _FLASH_DTYPES
    if use_flash and not dispatch.reference_forced():
        window_size = (-1, -1) if window is None else (window - 1, 0)
        return _flash_attn_func(q, k, v, causal=causal, window_size=window_size)
    return _sdpa(q, k, v, causal, window)


def differential_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """(softmax(q1 k1^T / sqrt(d)) - lam softmax(q2 k2^T / sqrt(d))) v; see `reference.differential_attention`.

    q [B, Tq, 2, H, d], k [B, Tk, 2, Hkv, d], v [B, Tk, Hkv, 2d], `lam` a scalar tensor; returns
    [B, Tq, H, 2d]. Each map is one `attention` call over a batch holding both d-wide value halves.
    """
    if q.dim() != 5 or k.dim() != 5 or q.shape[2] != 2 or k.shape[2] != 2 or v.shape[-1] != 2 * q.shape[-1]:
        raise ValueError("expected q [B, Tq, 2, H, d], k [B, Tk, 2, Hkv, d] and v [B, Tk, Hkv, 2d], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B = q.shape[0]
    v_halves = torch.cat(v.chunk(2, dim=-1), dim=0)  # [2B, Tk, Hkv, d]: low half, then high half

    def apply_map(j: int) -> torch.Tensor:
        qj, kj = q[:, :, j].repeat(2, 1, 1, 1), k[:, :, j].repeat(2, 1, 1, 1)
        y = attention(qj, kj, v_halves, causal)
        return torch.cat((y[:B], y[B:]), dim=-1)

    return apply_map(0) - lam.to(q.dtype) * apply_map(1)
