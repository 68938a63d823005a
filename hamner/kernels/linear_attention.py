"""Decayed linear attention: flash-linear-attention's chunked kernel on CUDA when installed, a
chunked PyTorch form otherwise.

The recurrence, per batch row and head, with state S [K, V] and a per-token log decay g_t <= 0:

    S_t = exp(g_t) S_{t-1} + k_t v_tᵀ        o_t = q_tᵀ S_t

The chunked form splits the sequence into chunks of C tokens. With G_i the cumulative sum of g
inside a chunk (so G is non-increasing and G_i <= 0), token i of a chunk whose incoming state
is S_0 gets

    o_i = exp(G_i) q_iᵀ S_0 + sum_{j <= i} exp(G_i - G_j) (q_i·k_j) v_j

and the chunk hands on exp(G_C) S_0 + sum_j exp(G_C - G_j) k_j v_jᵀ. Every exponent is <= 0
(the j > i entries are masked before exp), so no decay is ever inverted: nothing overflows
however strong the decay, where the form that factors exp(G_i - G_j) into exp(G_i) exp(-G_j)
overflows once the decay over a sequence passes float range.

Tensors use the [B, T, H, D] layout of the attention op. The CUDA path is registered as
`hamner::` custom ops so torch.compile(fullgraph=True) traces it without a graph break.
"""
from __future__ import annotations

import inspect

import torch

from hamner.kernels import dispatch

# Tokens per chunk of the PyTorch form: chunk-local work is C x C per head, the sequential scan
# runs T / C steps.
CHUNK_SIZE = 64


def _load_fla():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except (ImportError, OSError):  # not installed, or built against another torch/CUDA/triton
        return None
    # Older releases default to a head-first layout; ours is [B, T, H, D].
    if "head_first" in inspect.signature(chunk_simple_gla).parameters:
        return lambda **kw: chunk_simple_gla(head_first=False, **kw)
    return chunk_simple_gla


_fla_chunk_simple_gla = _load_fla()
# The dispatch keys included / excluded outside any op (autograd on), captured at import.
_AUTOGRAD_ON = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


def linear_attention_backend() -> str:
    """The backend CUDA calls use: "fla" when flash-linear-attention imports, else "pytorch"."""
    return "fla" if _fla_chunk_simple_gla is not None else "pytorch"


def chunked_decayed_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked PyTorch form (see the module docstring); returns (o [B, T, H, V], final state).

    Runs in the inputs' dtype; differentiable by autograd. A sequence shorter than a chunk is
    one chunk, so decoding one token costs one small chunk.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    pad = (-T) % C
    if pad:  # zero tokens with zero log decay leave the state exactly as it was
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        log_decay = torch.nn.functional.pad(log_decay, (0, 0, 0, pad))
    N = (T + pad) // C
    # [B, H, N, C, D] and [B, H, N, C]
    q, k, v = (t.transpose(1, 2).reshape(B, H, N, C, t.shape[-1]) for t in (q, k, v))
    g = log_decay.transpose(1, 2).reshape(B, H, N, C).cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # exp(G_i - G_j) for j <= i, 0 above the diagonal (masked before exp: those exponents are > 0).
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    o = ((q @ k.transpose(-1, -2)) * decay) @ v
    to_end = (g[..., -1:] - g).exp()  # decay from each token to its chunk's end, <= 1
    chunk_kv = (k * to_end[..., None]).transpose(-1, -2) @ v  # [B, H, N, K, V]
    chunk_decay = g[..., -1].exp()  # [B, H, N]
    q_decayed = q * g.exp()[..., None]
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    inter = []
    for n in range(N):
        inter.append(q_decayed[:, :, n] @ state)
        state = chunk_decay[:, :, n, None, None] * state + chunk_kv[:, :, n]
    o = o + torch.stack(inter, dim=2)
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o, state


@torch.library.custom_op("hamner::fla_decayed_linear_attention", mutates_args=())
def _fla_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    o, final = _fla_chunk_simple_gla(q=q, k=k, v=v, g=g, scale=1.0, initial_state=initial_state,
                                     output_final_state=True)
    dispatch.record_launch("fla_decayed_linear_attention")
    return o, final.float()


@_fla_forward.register_fake
def _(q, k, v, g, initial_state):
    B, _, H, K = q.shape
    return v.new_empty(v.shape), q.new_empty((B, H, K, v.shape[-1]), dtype=torch.float32)


@torch.library.custom_op("hamner::fla_decayed_linear_attention_bwd", mutates_args=())
def _fla_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None,
    do: torch.Tensor, dfinal: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients through fla's own backward kernels: the forward is re-run under autograd (fla's
    public API exposes its backward only through autograd), which costs one extra forward."""
    inputs = [t.detach().requires_grad_() for t in (q, k, v, g)]
    h0 = None if initial_state is None else initial_state.detach().requires_grad_()
    # A custom op runs with autograd's dispatch keys switched off; switch them back on for the re-run.
    with torch._C._ForceDispatchKeyGuard(*_AUTOGRAD_ON), torch.enable_grad():
        o, final = _fla_chunk_simple_gla(q=inputs[0], k=inputs[1], v=inputs[2], g=inputs[3], scale=1.0,
                                         initial_state=h0, output_final_state=True)
        wrt = inputs + ([h0] if h0 is not None else [])
        grads = torch.autograd.grad((o, final.float()), wrt, (do, dfinal), allow_unused=True)
    grads = [torch.zeros_like(t) if d is None else d for t, d in zip(wrt, grads)]
    dh0 = grads[4] if h0 is not None else q.new_empty(0)
    dispatch.record_launch("fla_decayed_linear_attention_bwd")
    return grads[0], grads[1], grads[2], grads[3], dh0


@_fla_backward.register_fake
def _(q, k, v, g, initial_state, do, dfinal):
    dh0 = q.new_empty(0) if initial_state is None else initial_state.new_empty(initial_state.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), g.new_empty(g.shape), dh0


def _fla_setup(ctx, inputs, output) -> None:
    q, k, v, g, initial_state = inputs
    ctx.has_initial_state = initial_state is not None
    ctx.save_for_backward(q, k, v, g, initial_state)


def _fla_backward_formula(ctx, do: torch.Tensor, dfinal: torch.Tensor | None):
    q, k, v, g, initial_state = ctx.saved_tensors
    if dfinal is None:
        dfinal = q.new_zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[-1]), dtype=torch.float32)
    dq, dk, dv, dg, dh0 = _fla_backward(q, k, v, g, initial_state, do, dfinal)
    return dq, dk, dv, dg, dh0 if ctx.has_initial_state else None


_fla_forward.register_autograd(_fla_backward_formula, setup_context=_fla_setup)


def decayed_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear attention with decay: o_t = q_tᵀ S_t, S_t = exp(g_t) S_{t-1} + k_t v_tᵀ (no score scale).

    q, k [B, T, H, K], v [B, T, H, V], log_decay g [B, T, H] (<= 0), initial_state S_0
    [B, H, K, V] or None (zeros). Returns (o [B, T, H, V], final state [B, H, K, V]). Runs in
    the inputs' dtype: cast them to float32 first for an fp32 computation.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or log_decay.shape != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, K], v [B, T, H, V] and log_decay [B, T, H], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}, {tuple(log_decay.shape)}"
        )
    if q.is_cuda and _fla_chunk_simple_gla is not None and not dispatch.reference_forced():
        q, k, v, log_decay = (t.contiguous() for t in (q, k, v, log_decay))
        return _fla_forward(q, k, v, log_decay, initial_state)
    return chunked_decayed_linear_attention(q, k, v, log_decay, initial_state)
