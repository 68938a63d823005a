"""Fused Triton kernels with autograd for Llama-style training, and attention dispatch.

Every op has a plain PyTorch twin in `kernels.reference` with the same signature. CUDA tensors
run the Triton kernels; CPU tensors run the reference unless TRITON_INTERPRET=1 is set, in
which case they run the Triton kernels in the interpreter (see `kernels.dispatch`).
"""
from kernels import reference
from kernels.attention import attention, attention_backend
from kernels.dispatch import TRITON_INSTALLED

if TRITON_INSTALLED:
    from kernels.cross_entropy import fused_linear_cross_entropy
    from kernels.rms_norm import add_rms_norm, rms_norm
    from kernels.rope import apply_rope, rope_cache
    from kernels.swiglu import swiglu
else:  # no triton (macOS, Windows): every op is its PyTorch reference
    from kernels.reference import (
        add_rms_norm,
        apply_rope,
        fused_linear_cross_entropy,
        rms_norm,
        rope_cache,
        swiglu,
    )

__all__ = [
    "add_rms_norm",
    "apply_rope",
    "attention",
    "attention_backend",
    "fused_linear_cross_entropy",
    "reference",
    "rms_norm",
    "rope_cache",
    "swiglu",
]
