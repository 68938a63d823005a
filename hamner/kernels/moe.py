"""Mixture-of-experts SwiGLU experts applied to routed tokens with grouped matmuls.

Each (token, slot) assignment is sorted by expert, so every expert's tokens are one contiguous
block; `torch.nn.functional.grouped_mm` then runs all experts' gate/up and down projections as
two grouped matmuls over those blocks, and the weighted outputs are summed back per token. Where
the grouped matmul is unavailable (older torch, dtypes or widths it does not take, CUDA without
bf16) and inside `dispatch.reference_only()`, the per-expert loop in `kernels.reference` runs.
The grouped matmul is registered as the `hamner::grouped_mm` custom op (with its backward), so
torch.compile(fullgraph=True) traces it whatever dtypes its own fake kernel would accept.
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


@torch.library.custom_op("hamner::grouped_mm", mutates_args=())
def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows offsets[g-1]:offsets[g] of a [M, K] times b[g] [K, N], stacked: [M, N]."""
    dispatch.record_launch("moe_grouped_mm")
    return _GROUPED_MM(a, b, offs=offsets)


@_grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("hamner::grouped_mm_bwd", mutates_args=())
def _grouped_mm_bwd(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(da, db): da = grad_g @ b[g]^T per row block, db[g] = a_g^T @ grad_g (a grouped matmul along M)."""
    grad = grad.contiguous()  # grouped_mm rejects the stride-0 gradients of a sum
    return _GROUPED_MM(grad, b.transpose(1, 2), offs=offsets), _GROUPED_MM(a.t(), grad, offs=offsets)


@_grouped_mm_bwd.register_fake
def _(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _grouped_mm_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad: torch.Tensor):
    a, b, offsets = ctx.saved_tensors
    da, db = _grouped_mm_bwd(grad, a, b, offsets)
    return da, db, None


_grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


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
    hidden = _grouped_mm(x[tokens], w_gate_up.transpose(1, 2), offsets)
    out = _grouped_mm(swiglu(hidden), w_down.transpose(1, 2), offsets)
    out = out * weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, tokens, out)
