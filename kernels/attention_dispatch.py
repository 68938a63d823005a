"""Grouped-query attention: flash-attn's kernel on CUDA when installed, PyTorch SDPA otherwise.

Tensors use the flash-attn layout [B, T, H, D]; query head i reads KV head i // (Hq // Hkv).
With causal=True and fewer queries than keys (cached decoding), the queries are the LAST Tq
positions: query j sits at position Tk - Tq + j and sees keys 0..Tk - Tq + j. flash-attn aligns
the causal mask that way already; SDPA's is_causal aligns it to the start, so that case gets an
explicit mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hamner.kernels import dispatch


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


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
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


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    n_queries, n_keys = q.shape[1], k.shape[1]
    mask = None
    if causal and 1 < n_queries < n_keys:
        mask = torch.ones(n_queries, n_keys, dtype=torch.bool, device=q.device).tril(n_keys - n_queries)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        # A single query at the end of the keys sees all of them: no mask at all.
        is_causal=causal and n_queries == n_keys,
        # Only ask for GQA when heads differ, so plain multi-head attention keeps every SDPA backend.
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Softmax attention of q [B, Tq, Hq, D] over k, v [B, Tk, Hkv, D]; returns [B, Tq, Hq, D].

    Scores are scaled by 1/sqrt(D). With causal=True, Tq <= Tk and the queries are the last Tq
    positions of the keys.
    """
    _check_shapes(q, k, v, causal)
    use_flash = _flash_attn_func is not None and q.is_cuda and q.dtype in _FLASH_DTYPES
    if use_flash and not dispatch.reference_forced():
        return _flash_attn_func(q, k, v, causal=causal)
    return _sdpa(q, k, v, causal)
