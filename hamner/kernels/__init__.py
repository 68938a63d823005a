"""Fused Triton kernels with autograd for Llama-style training, attention dispatch, MoE experts,
and the recurrences under the Hebbian memory (decayed linear attention) and TTT-Linear.

Every op has a plain PyTorch twin in `kernels.reference` with the same signature. CUDA tensors
run the Triton kernels; CPU tensors run the reference unless TRITON_INTERPRET=1 is set, in
which case they run the Triton kernels in the interpreter (see `kernels.dispatch`). `gelu` is torch's
own fused op on every path (see `reference.gelu`).
"""
from hamner.kernels import reference
from hamner.kernels.attention_dispatch import attention, attention_backend, differential_attention
from hamner.kernels.dispatch import TRITON_INSTALLED
from hamner.kernels.linear_attention import decayed_linear_attention, linear_attention_backend
from hamner.kernels.moe import moe_experts
from hamner.kernels.reference import gelu
from hamner.kernels.ttt import ttt_linear

if TRITON_INSTALLED:
    from hamner.kernels.activations import relu2, swiglu
    from hamner.kernels.cross_entropy import fused_linear_cross_entropy
    from hamner.kernels.norms import add_rms_norm, rms_norm
    from hamner.kernels.rope import apply_rope, rope_cache
else:  # no triton (macOS, Windows): every op is its PyTorch reference
    from hamner.kernels.reference import (
        add_rms_norm,
        apply_rope,
        fused_linear_cross_entropy,
        relu2,
        rms_norm,
        rope_cache,
        swiglu,
    )

__all__ = [
    "add_rms_norm",
    "apply_rope",
    "attention",
    "attention_backend",
    "decayed_linear_attention",
    "differential_attention",
    "fused_linear_cross_entropy",
    "gelu",
    "linear_attention_backend",
    "moe_experts",
    "reference",
    "relu2",
    "rms_norm",
    "rope_cache",
    "swiglu",
    "ttt_linear",
]
