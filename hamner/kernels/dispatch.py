"""Per-call choice between an op's Triton kernel and its PyTorch reference.

CUDA tensors run the Triton kernels. CPU tensors run the reference, unless the process was
started with TRITON_INTERPRET=1: then CPU tensors run the same Triton kernels in Triton's
interpreter, which is how the tests check the real kernels on machines without a GPU.
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator

import torch

try:
    import triton  # noqa: F401  (only to learn whether the kernels can run here)

    TRITON_INSTALLED: bool = True
except ImportError:
    TRITON_INSTALLED = False
INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"

# Whether CPU tensors take the interpreted kernels; on by default when the interpreter is on.
_cpu_kernels: bool = INTERPRET
# When set, every device runs the reference ops (the benchmarks' plain-PyTorch baseline).
_reference_only: bool = False

# Kernel name -> number of launches in this process; tests read it to prove a kernel ran.
launches: Counter[str] = Counter()


def use_triton(tensor: torch.Tensor) -> bool:
    """True when an op on `tensor` should run its Triton kernel rather than the reference."""
    if not TRITON_INSTALLED or _reference_only:
        return False
    if tensor.is_cuda:
        return True
    return INTERPRET and _cpu_kernels and tensor.device.type == "cpu"


@contextlib.contextmanager
def cpu_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, CPU tensors run the interpreted Triton kernels (True) or the reference (False)."""
    global _cpu_kernels
    previous, _cpu_kernels = _cpu_kernels, enabled
    try:
        yield
    finally:
        _cpu_kernels = previous


def record_launch(kernel_name: str) -> None:
    """Count one launch of `kernel_name` (cheap; called next to every kernel launch)."""
    launches[kernel_name] += 1


def reference_forced() -> bool:
    """True inside `reference_only()`: ops with a faster optional backend (flash-attn) skip it too."""
    return _reference_only


@contextlib.contextmanager
def reference_only(enabled: bool = True) -> Iterator[None]:
    """Within the block, ops on every device run the PyTorch reference (for side-by-side baselines)."""
    global _reference_only
    previous, _reference_only = _reference_only, enabled
    try:
        yield
    finally:
        _reference_only = previous
