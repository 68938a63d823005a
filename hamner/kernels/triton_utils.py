"""Shared launch helpers for the Triton kernels: block sizes, warp counts, row views.

Row-wise kernels (RMSNorm, SwiGLU, cross-entropy) hold a whole row, or a wide slice of it, in one
program; these helpers pick the block and warp count for a row width and give the 2-D row view
the kernels index with (unit stride along the row, any stride between rows).
"""
from __future__ import annotations

import functools

import torch
import triton

# Widest block a single program holds in registers; wider rows are split into column blocks.
MAX_BLOCK: int = 65536


def block_size(n_cols: int, cap: int = MAX_BLOCK) -> int:
    """Power-of-two block covering `n_cols` (at least 16), capped at `cap`."""
    if n_cols < 1:
        raise ValueError(f"row width must be positive, got {n_cols}")
    return min(max(triton.next_power_of_2(n_cols), 16), cap)


def num_warps(block: int) -> int:
    """Warps for a program that streams `block` elements: about 8 fp32 per thread, 2 to 16 warps.

    For hidden sizes 512..2048 this gives 2, 4 and 8 warps. A heuristic in the usual range for
    row-wise, memory-bound kernels; not yet timed on a GPU.
    """
    return min(max(block // 256, 2), 16)


def row_settings(n_cols: int, cap: int = MAX_BLOCK) -> tuple[int, int]:
    """(BLOCK, num_warps) for a kernel that handles `n_cols` columns of a row per program."""
    block = block_size(n_cols, cap)
    return block, num_warps(block)


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as a 2-D [rows, last_dim] tensor with unit column stride, copying only when needed."""
    rows = t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
    return rows if rows.stride(-1) == 1 or rows.shape[-1] == 1 else rows.contiguous()


@functools.cache
def _cuda_programs(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def reduction_programs(device: torch.device, n_rows: int) -> int:
    """Programs for a kernel that loops over rows and writes one partial sum per program.

    One per streaming multiprocessor on CUDA (each keeps its fp32 partial in registers); a few on
    CPU, where the interpreter runs programs one after another anyway.
    """
    available = _cuda_programs(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(available, n_rows))
