"""Fused output projection + cross-entropy that never holds the whole N x V logits.

Rows are processed in chunks sized by a memory budget. Per chunk: logits = hidden @ weight.T
(a torch matmul), then one Triton kernel finds each row's max and log-sum-exp, writes the row's
loss and overwrites the logits in place with d(loss)/d(logits) = (softmax - onehot) / n_valid;
two matmuls turn that into the chunk's hidden gradient and add its weight gradient to an fp32
buffer. Gradients are therefore computed during the forward (the trick Liger-Kernel uses), and
the backward only scales them by the incoming gradient. Nothing synchronises with the host: the
count of non-ignored targets stays on the device.

With `softcap` C the loss is taken over C·tanh(logits / C) (Gemma 2's final-logit soft-capping, used
by the nanoGPT speedrun): the kernel caps each logit as it reads it and multiplies the gradient by
d/dz C·tanh(z / C) = 1 - tanh²(z / C), so the capped logits never exist either.

When every target is ignored the result matches PyTorch's `F.cross_entropy` (and
`kernels.reference`): the loss is NaN (0 / 0) and both gradients are zero.
Targets must be ignore_index or lie in [0, V); other values are not checked (that would need a
host synchronisation) and give undefined results.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from hamner.kernels import reference
from hamner.kernels.dispatch import record_launch, use_triton
from hamner.kernels.triton_utils import row_settings

# Bytes of fp32 logits one chunk may hold: about 2,700 rows at the real vocabulary of 49,152.
CHUNK_BYTES: int = 512 * 2**20

# Widest column block a program loads at once; longer rows are streamed in blocks of this size.
_MAX_BLOCK: int = 8192


@triton.jit
def _log1p(r):
    """log(1 + r) for r >= 0, accurate when r is tiny (where log(1 + r) would lose all digits)."""
    # log1p(r) = 2 atanh(z) with z = r / (2 + r); for r < 0.5, z < 0.2 and six odd terms reach fp32 precision.
    z = r / (2.0 + r)
    z2 = z * z
    series = 1.0 / 9.0 + z2 / 11.0
    series = 1.0 / 5.0 + z2 * (1.0 / 7.0 + z2 * series)
    series = 2.0 * z * (1.0 + z2 * (1.0 / 3.0 + z2 * series))
    return tl.where(r < 0.5, series, tl.log(1.0 + r))


@triton.jit
def _softcap(z, cap):
    """(cap * tanh(z / cap), its derivative 1 - tanh^2(z / cap)) from one exp (the interpreter has no tanh).

    With t = exp(-2 |z| / cap): tanh(|z| / cap) = (1 - t) / (1 + t) and 1 - tanh^2 = 4 t / (1 + t)^2,
    which keeps its relative accuracy where tanh saturates (no 1 - tanh^2 cancellation).
    """
    t = tl.exp(-2.0 * tl.abs(z) / cap)
    inv = 1.0 / (1.0 + t)
    tanh = (1.0 - t) * inv
    return tl.where(z < 0, -tanh, tanh) * cap, 4.0 * t * inv * inv


@triton.jit
def _cross_entropy_grad_kernel(
    logits_ptr,
    logits_row_stride,
    targets_ptr,
    loss_ptr,
    n_valid_ptr,
    n_cols,
    ignore_index,
    softcap,
    BLOCK: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """One program per row: write the row's loss and replace its logits with the loss gradient.

    With SOFTCAP the loss is over softcap * tanh(logits / softcap) and the gradient is with respect to
    the logits before the cap."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_row_stride
    target = tl.load(targets_ptr + row).to(tl.int64)
    valid = target != ignore_index
    target_logit = tl.load(row_ptr + tl.where(valid, target, 0)).to(tl.float32)
    if SOFTCAP:
        target_logit, _target_slope = _softcap(target_logit, softcap)

    # Pass 1: running max over all logits and the sum of exp(logit - max) over the non-target ones.
    # Keeping the target out of the sum lets 1 - p(target) be formed without cancellation.
    row_max = target_logit
    other_sum = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        if SOFTCAP:
            capped, _slope = _softcap(x, softcap)
            x = tl.where(cols < n_cols, capped, -float("inf"))
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        others = tl.where(cols == target, -float("inf"), x)
        other_sum = other_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(others - new_max), axis=0)
        row_max = new_max

    target_exp = tl.exp(target_logit - row_max)
    total = other_sum + target_exp
    # loss = logsumexp - target_logit. When the target holds the max, target_exp == 1 and the loss
    # is log1p(other_sum), tiny for a confident model; otherwise both terms are positive.
    loss = tl.where(target_logit == row_max, _log1p(other_sum), row_max - target_logit + tl.log(total))
    tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))

    # Pass 2: gradient (softmax - onehot) / n_valid in place; p(target) - 1 = -other_sum / total.
    inv_total = 1.0 / total
    scale = tl.where(valid, 1.0 / tl.maximum(tl.load(n_valid_ptr), 1.0), 0.0)
    target_grad = -other_sum * inv_total
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(row_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
        if SOFTCAP:
            x, slope = _softcap(x, softcap)
            scale_cols = scale * slope
        else:
            scale_cols = scale
        grad = tl.where(cols == target, target_grad, tl.exp(x - row_max) * inv_total) * scale_cols
        tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def _chunk_rows(n_cols: int, chunk_bytes: int) -> int:
    """Rows per chunk so that a chunk's logits, counted as fp32, fit in `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * n_cols))


@torch.library.custom_op("hamner::fused_linear_cross_entropy", mutates_args=())
def _fused_linear_cross_entropy_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    chunk_bytes: int,
    with_grads: bool,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d loss / d hidden, d loss / d weight in fp32); both gradients are empty unless with_grads.
    `softcap` 0 means no cap."""
    n_rows, n_cols = hidden.shape[0], weight.shape[0]
    targets = targets.contiguous()
    n_valid = (targets != ignore_index).sum(dtype=torch.float32)
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    grad_hidden = hidden.new_empty(hidden.shape if with_grads else (0,))
    grad_weight = torch.zeros(
        weight.shape if with_grads else (0,), dtype=torch.float32, device=weight.device
    )
    block, warps = row_settings(n_cols, cap=_MAX_BLOCK)
    step = _chunk_rows(n_cols, chunk_bytes)
    for start in range(0, n_rows, step):
        end = min(start + step, n_rows)
        chunk = hidden[start:end]
        logits = chunk @ weight.T
        _cross_entropy_grad_kernel[(end - start,)](
            logits, logits.stride(0), targets[start:end], row_loss[start:end], n_valid,
            n_cols, ignore_index, softcap, BLOCK=block, SOFTCAP=softcap > 0, num_warps=warps,
        )
        record_launch("fused_linear_cross_entropy")
        if with_grads:
            torch.mm(logits, weight, out=grad_hidden[start:end])
            if logits.dtype == torch.float32:
                grad_weight.addmm_(logits.T, chunk)
            else:
                grad_weight += logits.T @ chunk
    return row_loss.sum() / n_valid, grad_hidden, grad_weight


@_fused_linear_cross_entropy_op.register_fake
def _(hidden, weight, targets, ignore_index, chunk_bytes, with_grads, softcap):
    loss = hidden.new_empty((), dtype=torch.float32)
    grad_hidden = hidden.new_empty(hidden.shape if with_grads else (0,))
    grad_weight = weight.new_empty(weight.shape if with_grads else (0,), dtype=torch.float32)
    return loss, grad_hidden, grad_weight


def _setup_context(ctx, inputs, output) -> None:
    ctx.weight_dtype = inputs[1].dtype
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, grad_loss, _grad_hidden, _grad_weight):
    grad_hidden, grad_weight = ctx.saved_tensors
    return (
        grad_hidden * grad_loss.to(grad_hidden.dtype),
        (grad_weight * grad_loss).to(ctx.weight_dtype),
        None,
        None,
        None,
        None,
        None,
    )


_fused_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of hidden @ weight.T against targets over the non-ignored rows.

    hidden [N, D], weight [V, D] (same dtype), targets [N] int64. Returns a float32 scalar.
    `chunk_bytes` bounds the fp32 logits held at once (the reference path ignores it).
    `softcap` C (> 0) takes the loss over C·tanh(logits / C) instead (see the module docstring).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden [N, D] and weight [V, D], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected targets of shape [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive, got {softcap!r}")
    if not use_triton(hidden):
        return reference.fused_linear_cross_entropy(hidden, weight, targets, ignore_index, softcap=softcap)
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, _, _ = _fused_linear_cross_entropy_op(
        hidden, weight, targets, ignore_index, chunk_bytes, with_grads, float(softcap or 0.0)
    )
    return loss
