"""SwiGLU activation, silu(gate) * up, as fused Triton kernels with autograd.

gate and up are read through their row strides, so the two halves of one fused gate/up
projection are used in place without a copy. Math is in fp32; the backward recomputes silu
from the saved gate and up instead of keeping the activation, trading a few flops for memory.
The kernel path is registered as `hamner::` custom ops so torch.compile traces it without graph
breaks; CPU tensors outside the Triton interpreter take `kernels.reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from hamner.kernels import dispatch, reference
from hamner.kernels.triton_utils import as_rows, row_settings

# Column block cap: rows wider than this are split over several programs.
_MAX_BLOCK = 4096


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _swiglu_fwd_kernel(G, g_row_stride, U, u_row_stride, Y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * g_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * u_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, g * _sigmoid(g) * u, mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    DY, dy_row_stride, G, g_row_stride, U, u_row_stride, DG, DU, n_cols, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * g_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * u_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    sig = _sigmoid(g)
    silu = g * sig
    # d silu / dg = sig * (1 + g * (1 - sig))
    tl.store(DG + row * n_cols + cols, dy * u * sig * (1.0 + g * (1.0 - sig)), mask=mask)
    tl.store(DU + row * n_cols + cols, dy * silu, mask=mask)


def _grid(n_rows: int, n_cols: int) -> tuple[tuple[int, int], int, int]:
    block, warps = row_settings(n_cols, cap=_MAX_BLOCK)
    return (n_rows, triton.cdiv(n_cols, block)), block, warps


@torch.library.custom_op("hamner::swiglu_fwd", mutates_args=())
def _swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = as_rows(gate), as_rows(up)
    n_rows, n_cols = gate.shape
    y = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
    grid, block, warps = _grid(n_rows, n_cols)
    _swiglu_fwd_kernel[grid](gate, gate.stride(0), up, up.stride(0), y, n_cols, BLOCK=block, num_warps=warps)
    dispatch.record_launch("swiglu_fwd")
    return y


@_swiglu_fwd.register_fake
def _(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return gate.new_empty(gate.shape)


@torch.library.custom_op("hamner::swiglu_bwd", mutates_args=())
def _swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgate, dup), recomputing silu(gate) from the saved inputs."""
    dy, gate, up = as_rows(dy), as_rows(gate), as_rows(up)
    n_rows, n_cols = gate.shape
    dgate = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
    dup = torch.empty((n_rows, n_cols), dtype=up.dtype, device=up.device)
    grid, block, warps = _grid(n_rows, n_cols)
    _swiglu_bwd_kernel[grid](
        dy, dy.stride(0), gate, gate.stride(0), up, up.stride(0), dgate, dup, n_cols,
        BLOCK=block, num_warps=warps,
    )
    dispatch.record_launch("swiglu_bwd")
    return dgate, dup


@_swiglu_bwd.register_fake
def _(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _swiglu_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, dy: torch.Tensor):
    gate, up = ctx.saved_tensors
    return _swiglu_bwd(dy, gate, up)


_swiglu_fwd.register_autograd(_swiglu_backward, setup_context=_swiglu_setup)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in fp32, output in gate's dtype; gate/up may be strided views of any leading shape."""
    if not dispatch.use_triton(gate):
        return reference.swiglu(gate, up)
    rows = (-1, gate.shape[-1])
    return _swiglu_fwd(gate.reshape(rows), up.reshape(rows)).view(gate.shape)
