"""The MLP activations as fused Triton kernels with autograd: SwiGLU, silu(gate) * up, and ReLU², relu(x)^2.

The op takes the output of one fused gate/up projection, [..., 2I] with gate in the first half
and up in the second, read in place through its row stride. The backward writes both halves'
gradients into one [..., 2I] tensor, which is the gradient of that projection's output as it
is: no concatenation after the kernel. Math is in fp32; the backward recomputes silu from the
saved input instead of keeping the activation, trading a few flops for memory. ReLU² is one
elementwise pass each way (forward relu(x)^2, backward 2 relu(x) dy from the saved input). The kernel path
is registered as `hamner::` custom ops so torch.compile traces it without graph breaks; CPU
tensors outside the Triton interpreter take `kernels.reference`.
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
def _swiglu_fwd_kernel(X, x_row_stride, Y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * x_row_stride + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, g * _sigmoid(g) * u, mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DY, dy_row_stride, X, x_row_stride, DX, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * x_row_stride + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    sig = _sigmoid(g)
    silu = g * sig
    # d silu / dg = sig * (1 + g * (1 - sig))
    tl.store(DX + row * 2 * n_cols + cols, dy * u * sig * (1.0 + g * (1.0 - sig)), mask=mask)
    tl.store(DX + row * 2 * n_cols + n_cols + cols, dy * silu, mask=mask)


def _grid(n_rows: int, n_cols: int) -> tuple[tuple[int, int], int, int]:
    block, warps = row_settings(n_cols, cap=_MAX_BLOCK)
    return (n_rows, triton.cdiv(n_cols, block)), block, warps


@torch.library.custom_op("hamner::swiglu_fwd", mutates_args=())
def _swiglu_fwd(gate_up: torch.Tensor) -> torch.Tensor:
    gate_up = as_rows(gate_up)
    n_rows, n_cols = gate_up.shape[0], gate_up.shape[1] // 2
    y = torch.empty((n_rows, n_cols), dtype=gate_up.dtype, device=gate_up.device)
    grid, block, warps = _grid(n_rows, n_cols)
    _swiglu_fwd_kernel[grid](gate_up, gate_up.stride(0), y, n_cols, BLOCK=block, num_warps=warps)
    dispatch.record_launch("swiglu_fwd")
    return y


@_swiglu_fwd.register_fake
def _(gate_up: torch.Tensor) -> torch.Tensor:
    return gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))


@torch.library.custom_op("hamner::swiglu_bwd", mutates_args=())
def _swiglu_bwd(dy: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """The gradient of gate_up [rows, 2I] (gate half, then up half), recomputing silu(gate)."""
    dy, gate_up = as_rows(dy), as_rows(gate_up)
    n_rows, n_cols = dy.shape
    dgate_up = torch.empty((n_rows, 2 * n_cols), dtype=gate_up.dtype, device=gate_up.device)
    grid, block, warps = _grid(n_rows, n_cols)
    _swiglu_bwd_kernel[grid](dy, dy.stride(0), gate_up, gate_up.stride(0), dgate_up, n_cols,
                             BLOCK=block, num_warps=warps)
    dispatch.record_launch("swiglu_bwd")
    return dgate_up


@_swiglu_bwd.register_fake
def _(dy: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    return gate_up.new_empty(gate_up.shape)


def _save_inputs(ctx, inputs, output) -> None:
    """Autograd setup of an activation whose backward needs only its input."""
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, dy: torch.Tensor) -> torch.Tensor:
    (gate_up,) = ctx.saved_tensors
    return _swiglu_bwd(dy, gate_up)


_swiglu_fwd.register_autograd(_swiglu_backward, setup_context=_save_inputs)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate, up the first and second half of the last dim of `gate_up` (a fused
    gate/up projection's output, any leading shape, any row stride); fp32 math, output in its dtype."""
    if not dispatch.use_triton(gate_up):
        return reference.swiglu(gate_up)
    if gate_up.shape[-1] % 2:
        raise ValueError(f"swiglu needs an even last dimension (gate and up halves), got {gate_up.shape[-1]}")
    width = gate_up.shape[-1]
    return _swiglu_fwd(gate_up.reshape(-1, width)).view(*gate_up.shape[:-1], width // 2)


@triton.jit
def _relu2_fwd_kernel(X, x_row_stride, Y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.maximum(tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32), 0.0)
    tl.store(Y + row * n_cols + cols, x * x, mask=mask)


@triton.jit
def _relu2_bwd_kernel(DY, dy_row_stride, X, x_row_stride, DX, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.maximum(tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32), 0.0)
    tl.store(DX + row * n_cols + cols, 2.0 * x * dy, mask=mask)


@torch.library.custom_op("hamner::relu2_fwd", mutates_args=())
def _relu2_fwd(x: torch.Tensor) -> torch.Tensor:
    x = as_rows(x)
    n_rows, n_cols = x.shape
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    grid, block, warps = _grid(n_rows, n_cols)
    _relu2_fwd_kernel[grid](x, x.stride(0), y, n_cols, BLOCK=block, num_warps=warps)
    dispatch.record_launch("relu2_fwd")
    return y


@_relu2_fwd.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("hamner::relu2_bwd", mutates_args=())
def _relu2_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of x [rows, I], 2 relu(x) dy."""
    dy, x = as_rows(dy), as_rows(x)
    n_rows, n_cols = dy.shape
    dx = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    grid, block, warps = _grid(n_rows, n_cols)
    _relu2_bwd_kernel[grid](dy, dy.stride(0), x, x.stride(0), dx, n_cols, BLOCK=block, num_warps=warps)
    dispatch.record_launch("relu2_bwd")
    return dx


@_relu2_bwd.register_fake
def _(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)


def _relu2_backward(ctx, dy: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return _relu2_bwd(dy, x)


_relu2_fwd.register_autograd(_relu2_backward, setup_context=_save_inputs)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2 elementwise (any leading shape, any row stride); fp32 math, output in x's dtype."""
    if not dispatch.use_triton(x):
        return reference.relu2(x)
    width = x.shape[-1]
    return _relu2_fwd(x.reshape(-1, width)).view(x.shape)
