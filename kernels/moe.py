"""Mixture-of-experts SwiGLU experts applied to routed tokens with grouped matmuls.

Each (token, slot) assignment is sorted by expert, so every expert's tokens are one contiguous
block; `torch.nn.functional.grouped_mm` then runs all experts' gate/up and down projections as
two grouped matmuls over those blocks, and the weighted outputs are summed back per token. Where
the grouped matmul is unavailable (older torch, dtypes or widths it does not take, CUDA without
bf16) and inside `dispatch.reference_only()`, the per-expert loop in `kernels.reference` runs.
Everything is ordinary differentiable torch ops with static shapes, so torch.compile traces it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hamner.kernels import dispatch, reference

if dispatch.TRITON_INSTALLED:
    from hamner.kernels.activations import swiglu
else:
    from hamner.kernels.reference import swiglu

_GROUPED_MM = getattr(F, "grouped_mm", None)
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _grouped_mm_usable(dtype: torch.dtype, device: torch.device, widths: tuple[int, ...]) -> bool:
    """True when grouped_mm takes these operands: its row strides must be multiples of 16 bytes."""
    if _GROUPED_MM is None or dispatch.reference_forced():
        return False
    if device.type == "cuda":
        ok_dtype = dtype == torch.bfloat16
    else:
        ok_dtype = device.type == "cpu" and dtype in _CPU_DTYPES
    itemsize = torch.empty((), dtype=dtype).element_size()
    return ok_dtype and all(w * itemsize % 16 == 0 for w in widths)


def moe_experts(
    x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """sum_slot weights[n, slot] * down_e(silu(gate_e(x_n)) * up_e(x_n)), e = expert_ids[n, slot].

    x [N, C]; expert_ids, weights [N, k]; w_gate_up [E, 2I, C] (rows: gate, then up) and
    w_down [E, C, I], laid out like nn.Linear weights. Returns [N, C] in the compute dtype
    (the autocast dtype when autocast is on, else x's).
    """
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    x, w_gate_up, w_down, weights = x.to(dtype), w_gate_up.to(dtype), w_down.to(dtype), weights.to(dtype)
    n_experts, inner = w_down.shape[0], w_down.shape[2]
    if not _grouped_mm_usable(dtype, x.device, (x.shape[1], inner)):
        return reference.moe_experts(x, expert_ids, weights, w_gate_up, w_down)
    flat_experts = expert_ids.reshape(-1)
    order = flat_experts.argsort(stable=True)
    tokens = order // expert_ids.shape[1]  # the token of each sorted assignment
    counts = torch.zeros(n_experts, dtype=torch.int64, device=x.device)
    counts.index_add_(0, flat_experts, torch.ones_like(flat_experts))
    offsets = counts.cumsum(0).to(torch.int32)  # end row of each expert's block
    hidden = _GROUPED_MM(x[tokens], w_gate_up.transpose(1, 2), offs=offsets)
    gate, up = hidden.chunk(2, dim=-1)
    out = _GROUPED_MM(swiglu(gate, up).contiguous(), w_down.transpose(1, 2), offs=offsets)
    out = out * weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, tokens, out)
