"""Shared check for kernel tests: an op against its `kernels.reference` twin run in float64.

Both sides get the same leaf tensors (the reference a float64 copy), the same random output
gradients, and are compared by relative error ||out - ref|| / ||ref|| on every output and on the
gradient of every leaf that requires grad.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hamner.kernels import dispatch

# Relative-error bounds from issue 2, by input dtype.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, computed in float64."""
    ref = ref.detach().double()
    return ((out.detach().double() - ref).norm() / ref.norm()).item()


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def check_against_float64(
    name: str,
    op: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    reference_op: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    leaves: Sequence[torch.Tensor],
    kernel_names: Sequence[str],
) -> dict[str, float]:
    """Assert op(*leaves) matches reference_op(*float64 leaves), forward and backward, within
    the tolerance for the leaves' dtype, and that each of `kernel_names` launched meanwhile.

    `op`/`reference_op` may build views (slices, transposes) of the leaves themselves, which is
    how non-contiguous inputs are tested. Returns the errors ("out0", ..., "grad0", ...) and
    prints them as one `relerr` line (see them with pytest -s).
    """
    before = dispatch.launches.copy()
    leaves64 = [
        leaf.detach().double().requires_grad_(leaf.requires_grad) for leaf in leaves
    ]
    outs = _as_tuple(op(*leaves))
    refs = _as_tuple(reference_op(*leaves64))
    generator = torch.Generator().manual_seed(1234)
    grads = [torch.randn(o.shape, generator=generator).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(refs, [g.double() for g in grads])
    ran = dispatch.launches - before
    assert all(ran[k] > 0 for k in kernel_names), (name, "kernels not launched", kernel_names, dict(ran))
    errors = {}
    for i, (out, ref) in enumerate(zip(outs, refs)):
        assert out.shape == ref.shape and out.dtype == leaves[0].dtype, (name, i, out.shape, out.dtype)
        errors[f"out{i}"] = rel_error(out, ref)
    for i, (leaf, leaf64) in enumerate(zip(leaves, leaves64)):
        if leaf.requires_grad:
            assert leaf.grad is not None, (name, f"no gradient reached input {i}")
            errors[f"grad{i}"] = rel_error(leaf.grad, leaf64.grad)
    print(f"relerr {name} {leaves[0].dtype} " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    tol = TOLERANCE[leaves[0].dtype]
    assert all(err <= tol for err in errors.values()), (name, errors)
    return errors



def assert_model_step_matches_reference_ops(model: torch.nn.Module, loss: torch.Tensor, idx: torch.Tensor) -> None:
    """`loss` (the model's training loss on `idx`, computed through the Triton kernels) and its gradients equal
    the same step through the reference ops."""
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with dispatch.cpu_kernels(False):
        reference_loss = model(idx, idx)
        reference_loss.backward()
    torch.testing.assert_close(loss, reference_loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name, rtol=1e-4, atol=1e-6)
