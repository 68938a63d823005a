"""Grouped-query attention: flash-attn's kernel on CUDA when installed, PyTorch SDPA otherwise.

Tensors use the flash-attn layout [B, T, H, D]; query head i reads KV head i // (Hq // Hkv).
With causal=True and fewer queries than keys (cached decoding), the queries are the LAST Tq
positions: query j sits at position Tk - Tq + j and sees keys 0..Tk - Tq + j. flash-attn aligns
the causal mask that way already; SDPA's is_causal aligns it to the start, so that case gets an
explicit mask. A `window` W limits each query to the last W keys up to itself: flash-attn's
`window_size=(W - 1, 0)`, or an SDPA band mask.

A window that changes at run time (a curriculum's window warm-up) comes as a 0-d integer tensor, never as a
Python int: under torch.compile it is a graph input, so a new value reruns the graph instead of recompiling
it, and nothing reads it back to the host. On CUDA, self-attention with such a window runs FlexAttention with
a sliding-window causal block mask built from the tensor (in eager mode cached per window tensor and value:
every layer's forward reuses it until the window changes); elsewhere (the CPU, cached decoding, documents,
`reference_only()`) an SDPA band mask built from the tensor.

`segment_ids` [B, T] (document-aware packing) keeps each query inside its own document: query t
sees key s only when both carry the same id. CUDA runs that as a FlexAttention block mask; CPU
(and `reference_only()`) as an SDPA boolean mask.

`differential_attention` (two softmax maps and their weighted difference) runs as attention
calls of the same backends, each map applied to both halves of the value width.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hamner.kernels import dispatch
from hamner.kernels.reference import causal_mask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


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


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                  window: int | torch.Tensor | None) -> None:
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
    if window is not None and (not causal or (not isinstance(window, torch.Tensor) and window < 1)):
        raise ValueError(f"a window needs causal attention and at least 1 key, got window={window}, causal={causal}")


def _check_segments(q: torch.Tensor, k: torch.Tensor, segment_ids: torch.Tensor) -> None:
    if segment_ids.shape != q.shape[:2] or q.shape[1] != k.shape[1]:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} need self-attention with one id per position "
                         f"of q {tuple(q.shape)} and k {tuple(k.shape)}")


def document_mask(segment_ids: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, 1, T, T] boolean: query t may see key s (same document, and s <= t when causal)."""
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    if causal:
        n = segment_ids.shape[1]
        mask = mask & torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()
    return mask


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, segment_ids: torch.Tensor) -> torch.Tensor:
    """Document-masked attention through FlexAttention (compiled on CUDA, eager elsewhere)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def same_document(b, h, q_idx, kv_idx):
        keep = segment_ids[b, q_idx] == segment_ids[b, kv_idx]
        return keep & (kv_idx <= q_idx) if causal else keep

    global _LAST_BLOCK_MASK
    cached_ids, cached_causal, block_mask = _LAST_BLOCK_MASK
    if cached_ids() is not segment_ids or cached_causal != causal:  # every layer of a forward shares one mask
        batch, n = segment_ids.shape
        block_mask = create_block_mask(same_document, batch, None, n, n, device=q.device)
        _LAST_BLOCK_MASK = (weakref.ref(segment_ids), causal, block_mask)
    run = _compiled_flex() if q.is_cuda else flex_attention
    out = run(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
              enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def sliding_window_block_mask(window: torch.Tensor, n: int, device: torch.device) -> BlockMask:
    """The FlexAttention block mask of causal self-attention over `n` positions where query t sees keys
    t - window + 1 .. t; `window` is a 0-d integer tensor read on the device (the same band as
    `reference.causal_mask(n, n, window)`)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return create_block_mask(sliding_window, None, None, n, n, device=device)


def _flex_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Sliding-window causal self-attention through FlexAttention (compiled on CUDA, eager elsewhere); the
    block mask comes from `sliding_window_block_mask`, built inside a compiled graph and cached in eager mode."""
    from torch.nn.attention.flex_attention import flex_attention

    n = q.shape[1]
    if torch.compiler.is_compiling():
        block_mask = sliding_window_block_mask(window, n, q.device)
    else:
        # The version counter moves exactly when the window tensor is written: a new value, a new mask.
        key = (id(window), window._version, n, str(q.device))
        cached = _WINDOW_MASKS.get(key)
        if cached is None or cached[0]() is not window:
            if len(_WINDOW_MASKS) >= _WINDOW_MASK_CACHE:
                _WINDOW_MASKS.clear()
            cached = (weakref.ref(window), sliding_window_block_mask(window, n, q.device))
            _WINDOW_MASKS[key] = cached
        block_mask = cached[1]
    run = _compiled_flex() if q.is_cuda else flex_attention
    out = run(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
              enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


_COMPILED_FLEX = None
_LAST_BLOCK_MASK: tuple = (lambda: None, False, None)  # (weak ref to the segment ids, causal, block mask)
_WINDOW_MASK_CACHE = 64  # sliding-window block masks kept (a few per layer), cleared when full
_WINDOW_MASKS: dict[tuple, tuple] = {}  # (id, version, n, device) -> (weak ref to the window, block mask)


def _compiled_flex():
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int | torch.Tensor | None,
          segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    n_queries, n_keys = q.shape[1], k.shape[1]
    # A run-time window (a tensor) always gets its band mask: comparing it here would read it back.
    banded = window is not None and (isinstance(window, torch.Tensor) or window < n_keys)
    # A single query at the end of the keys sees all of them (unless banded): no mask at all.
    mask = None
    if segment_ids is not None:
        mask = document_mask(segment_ids, causal)
        if window is not None:
            mask = mask & causal_mask(n_queries, n_keys, window, device=q.device)
        causal = False
    elif causal and (banded or 1 < n_queries < n_keys):
        mask = causal_mask(n_queries, n_keys, window, device=q.device)
    # A branch, not an expression: under torch.compile with a dynamic length the comparison is symbolic, and
    # branching on it gives the plain bool SDPA takes (guarded), where the expression would hand it a SymBool.
    is_causal = False
    if causal and mask is None and n_queries == n_keys:
        is_causal = True
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=is_causal,
        # Only ask for GQA when heads differ, so plain multi-head attention keeps every SDPA backend.
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    window: int | torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of q [B, Tq, Hq, D] over k, v [B, Tk, Hkv, D]; returns [B, Tq, Hq, D].

    Scores are scaled by 1/sqrt(D). With causal=True, Tq <= Tk and the queries are the last Tq
    positions of the keys; with `window`, each query sees only the last `window` keys up to itself
    (a 0-d integer tensor for a window set at run time, see the module docstring).
    `segment_ids` [B, T] (self-attention only) restricts every query to the keys of its own
    segment (document).
    """
    _check_shapes(q, k, v, causal, window)
    if segment_ids is not None:
        _check_segments(q, k, segment_ids)
        if q.is_cuda and window is None and not dispatch.reference_forced():
            return _flex(q, k, v, causal, segment_ids)
        return _sdpa(q, k, v, causal, window, segment_ids)
    if isinstance(window, torch.Tensor):
        if q.is_cuda and q.shape[1] == k.shape[1] and not dispatch.reference_forced():
            return _flex_window(q, k, v, window)
        return _sdpa(q, k, v, causal, window)
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
