"""One optimizer step as a plain function: the training loop and `bench/throughput.py` both call it.

`train_step` runs forward and backward over the micro-batches of one step (gradient accumulation;
under DistributedDataParallel the gradients are all-reduced only on the last micro-batch), unscales
fp16 gradients, clips the total gradient norm, applies the update unless the step went non-finite,
and zeroes the gradients. It never waits for the device: the loss, the gradient norm and the
"update applied" flag come back as device tensors for the caller to accumulate and read later.

The optimizer may be one optimizer or a list of them (e.g. one for matrices and one for the rest):
each is stepped, skipped and zeroed the same way, and the gradients of all their parameters are
clipped together.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hamner.train.optim import Optimizers, step_if_finite

# Called as loss_fn(*micro_batch): (inputs, targets) or with more tensors after them (e.g. segment ids).
LossFn = Callable[..., torch.Tensor]
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class StepResult:
    """What one step leaves on the device (nothing here has been read by the host)."""

    loss: torch.Tensor  # mean loss over the micro-batches, fp32 scalar
    grad_norm: torch.Tensor  # total gradient norm before clipping, fp32 scalar
    finite: torch.Tensor  # bool scalar: False when a non-finite loss (or gradient) skipped the update


def train_step(loss_fn: LossFn, micro_batches: Sequence[tuple[torch.Tensor | None, ...]],
               optimizers: Optimizers, *, scaler: torch.amp.GradScaler | None = None,
               autocast_dtype: torch.dtype | None = None,
               no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
               max_grad_norm: float = MAX_GRAD_NORM) -> StepResult:
    """Forward + backward over `micro_batches` ((inputs, targets, ...) tuples), clip, step, zero-grad.

    `loss_fn(*micro_batch)` returns the mean loss of a micro-batch. `autocast_dtype` (bf16 or fp16)
    runs the forward under autocast on the inputs' device; None or fp32 runs it plainly. An enabled `scaler`
    scales the fp16 loss and skips steps whose gradients overflowed (then only a non-finite loss
    counts as bad). `no_sync` (DDP's `model.no_sync`) is entered for every micro-batch but the last.
    """
    opts = list(optimizers) if isinstance(optimizers, Sequence) else [optimizers]
    scaling = scaler is not None and scaler.is_enabled()
    count = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for i, micro_batch in enumerate(micro_batches):
        sync = no_sync() if no_sync is not None and i < count - 1 else contextlib.nullcontext()
        with sync:
            with autocast(micro_batch[0].device, autocast_dtype):
                loss = loss_fn(*micro_batch)
            share = loss / count
            (scaler.scale(share) if scaling else share).backward()
        loss_sum += loss.detach().float()
    loss = loss_sum / count
    if scaling:
        for opt in opts:
            scaler.unscale_(opt)
    params = [p for opt in opts for group in opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaling:
        finite = torch.isfinite(loss)
        for opt in opts:
            scaler.step(opt)  # skips the update when the gradients overflowed
        scaler.update()
    else:
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        for opt in opts:
            step_if_finite(opt, finite)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    return StepResult(loss, grad_norm.detach().float(), finite)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (bf16 / fp16), or no autocast for None and fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
