"""RMSNorm and residual-add + RMSNorm as fused Triton kernels with autograd.

Forward: one program per row holds the whole row (BLOCK = next power of two of the width, masked),
upcasts to fp32, writes the output and the row's rstd (fp32, kept for the backward). The fused
variant reads x and residual once and writes both the sum and the normed sum.
Backward: each program walks a contiguous range of rows, writes dx and keeps its share of the weight
gradient in fp32 registers; the [programs, H] partials are summed by torch, so the weight gradient
is deterministic (no atomics). How rows are walked is a `BackwardTiling`: one row at a time (the
first design: few programs, one per SM), or tiles of several rows as one 2-D block, with many more
programs so that more loads are in flight at small widths. `BWD_CANDIDATES` lists configurations a
GPU run times (bench/rms_norm_sweep.py); `set_backward_tiling` picks one for the process.
The kernel path is registered as `hamner::` custom ops so torch.compile traces it without graph
breaks; CPU tensors outside the Triton interpreter take `kernels.reference`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from hamner.kernels import dispatch, reference
from hamner.kernels.triton_utils import as_rows, reduction_programs, row_settings


@triton.jit
def _rms_norm_fwd_kernel(
    X, x_row_stride, R, r_row_stride, S, Y, W, RSTD, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * r_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to its stored dtype first: the norm is of the tensor we hand back.
        x = x.to(S.dtype.element_ty).to(tl.float32)
        tl.store(S + row * n_cols + cols, x, mask=mask)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    # Llama casting: normalise in fp32, round to the output dtype, then scale by the weight.
    normed = (x * rstd).to(Y.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, normed * w, mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, dy_row_stride, X, W, RSTD, DS, ds_row_stride, DX, DW_PARTIAL,
    n_rows, n_cols, rows_per_program,
    HAS_DS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    # int64 bounds make the loop index int64, so row * stride cannot overflow.
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in range(row_start, row_end):
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        normed = x * rstd
        dnormed = dy * w
        dx = rstd * (dnormed - normed * (tl.sum(dnormed * normed, axis=0) / n_cols))
        if HAS_DS:
            dx += tl.load(DS + row * ds_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * n_cols + cols, dx, mask=mask)
        dw += dy * normed.to(X.dtype.element_ty).to(tl.float32)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


@triton.jit
def _rms_norm_bwd_tiled_kernel(
    DY, dy_row_stride, X, W, RSTD, DS, ds_row_stride, DX, DW_PARTIAL,
    n_rows, n_cols, tiles_per_program,
    HAS_DS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """The backward over tiles of BLOCK_ROWS rows held as one [BLOCK_ROWS, BLOCK] block."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    col_mask = cols < n_cols
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    tile_start = pid.to(tl.int64) * tiles_per_program
    for tile in range(tile_start, tile_start + tiles_per_program):
        rows = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(X + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * dy_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        normed = x * rstd[:, None]
        dnormed = dy * w[None, :]
        dot = tl.sum(dnormed * normed, axis=1) / n_cols
        dx = rstd[:, None] * (dnormed - normed * dot[:, None])
        if HAS_DS:
            dx += tl.load(DS + rows[:, None] * ds_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dx, mask=mask)
        dw += tl.sum(dy * normed.to(X.dtype.element_ty).to(tl.float32), axis=0)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=col_mask)


@dataclass(frozen=True)
class BackwardTiling:
    """How the RMSNorm backward walks its rows.

    rows_per_tile: 1 runs the row-at-a-time kernel; more runs the tiled one with that many rows per
    2-D block (a power of two). num_warps: None takes the row-width heuristic (`row_settings`).
    programs_per_sm: programs launched per streaming multiprocessor (each writes one dW partial)."""

    rows_per_tile: int = 1
    num_warps: int | None = None
    programs_per_sm: int = 1

    def name(self) -> str:
        return f"rows{self.rows_per_tile}-warps{self.num_warps or 'auto'}-per_sm{self.programs_per_sm}"


# The configurations a GPU sweep times; the first is the row-at-a-time design.
BWD_CANDIDATES: tuple[BackwardTiling, ...] = (
    BackwardTiling(1, None, 1),
    BackwardTiling(1, 4, 4),
    BackwardTiling(2, 4, 4),
    BackwardTiling(4, 4, 4),
    BackwardTiling(4, 8, 8),
    BackwardTiling(8, 4, 4),
    BackwardTiling(8, 8, 8),
    BackwardTiling(16, 8, 4),
)
_bwd_tiling: BackwardTiling = BWD_CANDIDATES[0]


def backward_tiling() -> BackwardTiling:
    """The tiling the RMSNorm backward uses now."""
    return _bwd_tiling


@contextlib.contextmanager
def set_backward_tiling(tiling: BackwardTiling) -> Iterator[None]:
    """Within the block, the RMSNorm backward launches with `tiling`."""
    global _bwd_tiling
    if tiling.rows_per_tile < 1 or tiling.rows_per_tile & (tiling.rows_per_tile - 1):
        raise ValueError(f"rows_per_tile must be a power of two, got {tiling.rows_per_tile}")
    previous, _bwd_tiling = _bwd_tiling, tiling
    try:
        yield
    finally:
        _bwd_tiling = previous


def _launch_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the forward kernel on 2-D rows; returns (normed, summed-or-x, rstd)."""
    x = as_rows(x)
    n_rows, n_cols = x.shape
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if residual is None:
        r, summed = x, x
    else:
        r = as_rows(residual)
        summed = torch.empty_like(y)
    block, warps = row_settings(n_cols)
    _rms_norm_fwd_kernel[(n_rows,)](
        x, x.stride(0), r, r.stride(0), summed, y, weight.contiguous(), rstd, n_cols, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps,
    )
    dispatch.record_launch("rms_norm_fwd" if residual is None else "add_rms_norm_fwd")
    return y, summed, rstd


@torch.library.custom_op("hamner::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, _, rstd = _launch_fwd(x, None, weight, eps)
    return y, rstd


@_rms_norm_fwd.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("hamner::add_rms_norm_fwd", mutates_args=())
def _add_rms_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_fwd(x, residual, weight, eps)


@_add_rms_norm_fwd.register_fake
def _(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(x.dtype, residual.dtype)
    return (
        x.new_empty(x.shape, dtype=dtype),
        x.new_empty(x.shape, dtype=dtype),
        x.new_empty(x.shape[0], dtype=torch.float32),
    )


@torch.library.custom_op("hamner::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dsummed: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """dx (plus `dsummed`, the gradient reaching the sum directly) and dweight, from the saved rstd."""
    dy, x = as_rows(dy), as_rows(x).contiguous()
    ds = dy if dsummed is None else as_rows(dsummed)
    n_rows, n_cols = x.shape
    tiling = _bwd_tiling
    block, warps = row_settings(n_cols)
    warps = tiling.num_warps or warps
    tiles = triton.cdiv(n_rows, tiling.rows_per_tile)
    programs = reduction_programs(x.device, tiles) * tiling.programs_per_sm
    tiles_per_program = max(1, triton.cdiv(tiles, programs))
    programs = triton.cdiv(tiles, tiles_per_program)
    dx = torch.empty_like(x)
    dw_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=x.device)
    args = (dy, dy.stride(0), x, weight.contiguous(), rstd, ds, ds.stride(0), dx, dw_partial,
            n_rows, n_cols, tiles_per_program)
    if tiling.rows_per_tile == 1:
        _rms_norm_bwd_kernel[(programs,)](*args, HAS_DS=dsummed is not None, BLOCK=block, num_warps=warps)
    else:
        _rms_norm_bwd_tiled_kernel[(programs,)](*args, HAS_DS=dsummed is not None, BLOCK_ROWS=tiling.rows_per_tile,
                                                BLOCK=block, num_warps=warps)
    dispatch.record_launch("rms_norm_bwd")
    return dx, dw_partial.sum(0).to(weight.dtype)


@_rms_norm_bwd.register_fake
def _(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dsummed: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), torch.empty_like(weight)


def _rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, ctx.eps = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_backward(ctx, dy: torch.Tensor, _drstd: torch.Tensor):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rms_norm_bwd(dy, x, weight, rstd, None)
    return dx, dw, None


_rms_norm_fwd.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)


def _add_rms_norm_setup(ctx, inputs, output) -> None:
    x, residual, weight, _ = inputs
    ctx.dtypes = (x.dtype, residual.dtype)
    ctx.save_for_backward(output[1], weight, output[2])


def _add_rms_norm_backward(ctx, dy: torch.Tensor, dsummed: torch.Tensor, _drstd: torch.Tensor):
    summed, weight, rstd = ctx.saved_tensors
    dsum, dw = _rms_norm_bwd(dy, summed, weight, rstd, dsummed)
    x_dtype, residual_dtype = ctx.dtypes
    return dsum.to(x_dtype), dsum.to(residual_dtype), dw, None


_add_rms_norm_fwd.register_autograd(_add_rms_norm_backward, setup_context=_add_rms_norm_setup)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Llama RMSNorm over the last dim of `x` (any leading shape); output in x's dtype."""
    if not dispatch.use_triton(x):
        return reference.rms_norm(x, weight, eps)
    y, _ = _rms_norm_fwd(x.reshape(-1, x.shape[-1]), weight, eps)
    return y.view(x.shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass: the sum is read once and written once."""
    if not dispatch.use_triton(x):
        return reference.add_rms_norm(x, residual, weight, eps)
    rows = (-1, x.shape[-1])
    y, summed, _ = _add_rms_norm_fwd(x.reshape(rows), residual.reshape(rows), weight, eps)
    return y.view(x.shape), summed.view(x.shape)
