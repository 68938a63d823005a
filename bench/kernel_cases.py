"""What the kernel benchmarks run: every op of `kernels` at the presets' shapes, in every variant.

A case is one op at one shape. It makes its inputs (seeded, one set per rotation slot), names the
leaves that receive gradients and the cotangents fed to the backward, and knows the bytes a
memory-bound op must move at least (read each input once, write each output once) or the
nominal FLOPs of a compute-bound one, per pass. Variants of an op take the same inputs:

  hamner   the public op in `kernels` (the Triton kernels on CUDA)
  eager    its twin in `kernels.reference`, plain PyTorch
  compile  that twin under torch.compile
  torch    PyTorch's own op where there is one (F.rms_norm, F.linear_cross_entropy, SDPA)
  liger    Liger-Kernel's op, when liger-kernel is installed

`rope_cache` is not benchmarked: it builds the RoPE tables once per model, outside the step.
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn.functional as F

from hamner import kernels
from hamner.kernels import reference
from hamner.model.config import HamnerConfig, model_config

PASSES: tuple[str, ...] = ("fwd", "bwd", "fwd+bwd")
EPS: float = 1e-5
SEED: int = 1234
# (preset, batch, sequence length) benchmarked on a GPU, and the tiny stand-in CPU runs use.
GPU_SHAPES: tuple[tuple[str, int, int], ...] = (("v3-50m", 24, 1024), ("v2-164m", 24, 1024))
CPU_SHAPES: tuple[tuple[str, int, int], ...] = (("demo", 2, 64),)

LIGER_INSTALLED: bool = importlib.util.find_spec("liger_kernel") is not None
HAS_TORCH_LCE: bool = hasattr(F, "linear_cross_entropy")

Outputs = tuple[torch.Tensor, ...]


@dataclass
class Inputs:
    """One input set: the op's arguments, the tensors that get gradients, one cotangent per output."""

    args: tuple
    leaves: tuple[torch.Tensor, ...]
    cotangents: tuple[torch.Tensor, ...]

    def nbytes(self) -> int:
        """Bytes held by the tensor arguments and the cotangents."""
        tensors = [a for a in self.args if isinstance(a, torch.Tensor)] + list(self.cotangents)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class OpCase:
    """One op at one shape: how to make its inputs, its variants and the work each pass does."""

    op: str
    shape: str  # preset name, e.g. "v3-50m"
    dims: str  # the op's tensor sizes, for people reading the table
    make_inputs: Callable[[torch.Generator, torch.device, torch.dtype], Inputs]
    variants: dict[str, Callable[..., Outputs]]  # only the variants that can run here
    work: dict[str, float]  # pass -> bytes (memory-bound) or FLOPs (compute-bound)
    memory_bound: bool
    skips: dict[str, str] = field(default_factory=dict)  # variant -> why it cannot run here

    @property
    def variant_names(self) -> list[str]:
        """Every variant of this op, runnable here or skipped."""
        return [*self.variants, *(name for name in self.skips if name not in self.variants)]

    @property
    def group(self) -> str:
        return f"{self.op} {self.shape} {self.dims}"


def bench_device() -> torch.device:
    """The device the benchmarks run on: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (the training dtype), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _randn(gen: torch.Generator, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
           scale: float = 1.0, shift: float = 0.0, grad: bool = True) -> torch.Tensor:
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale + shift
    return t.to(dtype).requires_grad_(grad)


def _liger_ops() -> dict[str, Callable[..., Outputs]]:
    """Liger-Kernel's ops in our signatures; empty when liger-kernel is not installed."""
    if not LIGER_INSTALLED:
        return {}
    from liger_kernel.transformers import functional as lf

    ops: dict[str, Callable[..., Outputs]] = {
        "rms_norm": lambda x, w: (lf.liger_rms_norm(x, w, EPS),),
        "swiglu": lambda gate_up: (lf.liger_swiglu(*gate_up.chunk(2, dim=-1)),),
        # Liger wants Hugging Face's layout: [B, H, T, D] and full-width [1, T, D] tables.
        "rope": lambda q, k, cos, sin, cos_hf, sin_hf: tuple(
            t.transpose(1, 2) for t in lf.liger_rope(q.transpose(1, 2), k.transpose(1, 2), cos_hf, sin_hf)),
        "fused_linear_cross_entropy": lambda h, w, t: (lf.liger_fused_linear_cross_entropy(h, w, t),),
    }
    try:
        from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
    except ImportError:  # older liger-kernel without the fused residual add
        return ops
    ops["add_rms_norm"] = lambda x, r, w: tuple(
        LigerFusedAddRMSNormFunction.apply(x, r, w, EPS, 0.0, "llama", False))
    return ops


def _torch_lce(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> Outputs:
    options = torch.nn.LinearCrossEntropyOptions() if hasattr(torch.nn, "LinearCrossEntropyOptions") else None
    return (F.linear_cross_entropy(h, w, t, options=options),)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Outputs:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=q.shape[2] != k.shape[2])
    return (out.transpose(1, 2),)


def _in_shared_signature(ops: ModuleType) -> dict[str, Callable[..., Outputs]]:
    """Each op of `ops` (`kernels` or `kernels.reference`) in the benchmarks' shared signature."""
    return {
        "rms_norm": lambda x, w: (ops.rms_norm(x, w, EPS),),
        "add_rms_norm": lambda x, r, w: ops.add_rms_norm(x, r, w, EPS),
        "swiglu": lambda gate_up: (ops.swiglu(gate_up),),
        "rope": lambda q, k, cos, sin, cos_hf, sin_hf: ops.apply_rope(q, k, cos, sin),
        "attention": lambda q, k, v: (ops.attention(q, k, v, causal=True),),
        "fused_linear_cross_entropy": lambda h, w, t: (ops.fused_linear_cross_entropy(h, w, t),),
    }


# The plain-PyTorch twin of each op ("eager" and "compile" wrap these) and our ops.
EAGER: dict[str, Callable[..., Outputs]] = _in_shared_signature(reference)
HAMNER: dict[str, Callable[..., Outputs]] = _in_shared_signature(kernels)
TORCH: dict[str, Callable[..., Outputs]] = {
    "rms_norm": lambda x, w: (F.rms_norm(x, (x.shape[-1],), w, EPS),),
    "add_rms_norm": lambda x, r, w: (F.rms_norm(x + r, (x.shape[-1],), w, EPS), x + r),
    "attention": _sdpa,
    "fused_linear_cross_entropy": _torch_lce,
}


@functools.cache
def compiled(op: str, shape: str) -> Callable[..., Outputs]:
    """The eager twin of `op` under torch.compile, one compiled function per shape (no dynamic shapes)."""
    return torch.compile(EAGER[op], dynamic=False)


def _variants(op: str, shape: str, device: torch.device) -> tuple[dict[str, Callable[..., Outputs]], dict[str, str]]:
    """(variant -> function, for those that can run here; variant -> why it cannot) for one op."""
    variants: dict[str, Callable[..., Outputs]] = {
        "hamner": HAMNER[op],
        "eager": EAGER[op],
        "compile": lambda *args: compiled(op, shape)(*args),
    }
    skips: dict[str, str] = {}
    if op in TORCH:
        variants["torch"] = TORCH[op]
    if op == "fused_linear_cross_entropy" and not HAS_TORCH_LCE:
        skips["torch"] = "this torch has no F.linear_cross_entropy"
    if op == "attention" and kernels.attention_backend() == "sdpa":
        skips["torch"] = "kernels.attention already runs SDPA here (flash-attn is not installed)"
    if op != "attention":  # Liger-Kernel has no attention kernel
        liger = _liger_ops()
        if op in liger:
            variants["liger"] = liger[op]
        else:
            skips["liger"] = f"this liger-kernel has no {op}" if LIGER_INSTALLED else "liger-kernel is not installed"
    if device.type != "cuda":
        skips["hamner"] = "the Triton kernels need a GPU (the interpreter is for correctness tests, not timing)"
        skips["compile"] = "torch.compile on CPU takes too long to compile for CI"
        if "liger" in variants:
            skips["liger"] = "Liger-Kernel's Triton kernels need a GPU"
    for name in skips:
        variants.pop(name, None)
    return variants, skips


def op_cases(config: HamnerConfig, shape: str, batch: int, seq_len: int, device: torch.device) -> list[OpCase]:
    """Every benchmarked op at the shapes of `config` with `batch` x `seq_len` tokens."""
    n, c, i, v = batch * seq_len, config.hidden_size, config.intermediate_size, config.vocab_size
    hq, hkv, d = config.n_heads, config.n_kv_heads, config.head_dim
    e = bench_dtype(device).itemsize
    cases = []

    def add(op: str, dims: str, make: Callable, work: dict[str, float], memory_bound: bool) -> None:
        variants, skips = _variants(op, shape, device)
        cases.append(OpCase(op, shape, dims, make, variants, work, memory_bound, skips))

    def rows(gen, dev, dtype, width: int, count: int) -> list[torch.Tensor]:
        return [_randn(gen, (n, width), dev, dtype) for _ in range(count)]

    def grad_like(gen, t: torch.Tensor) -> torch.Tensor:
        return _randn(gen, tuple(t.shape), t.device, t.dtype, grad=False)

    def make_rms_norm(gen, dev, dtype):
        (x,) = rows(gen, dev, dtype, c, 1)
        w = _randn(gen, (c,), dev, dtype, scale=0.1, shift=1.0)
        return Inputs((x, w), (x, w), (grad_like(gen, x),))

    def make_add_rms_norm(gen, dev, dtype):
        x, r = rows(gen, dev, dtype, c, 2)
        w = _randn(gen, (c,), dev, dtype, scale=0.1, shift=1.0)
        return Inputs((x, r, w), (x, r, w), (grad_like(gen, x), grad_like(gen, x)))

    def make_swiglu(gen, dev, dtype):
        (gate_up,) = rows(gen, dev, dtype, 2 * i, 1)
        return Inputs((gate_up,), (gate_up,), (_randn(gen, (n, i), dev, dtype, grad=False),))

    def make_rope(gen, dev, dtype):
        q = _randn(gen, (batch, seq_len, hq, d), dev, dtype)
        k = _randn(gen, (batch, seq_len, hkv, d), dev, dtype)
        cos, sin = kernels.rope_cache(seq_len, d, config.rope_theta, device=dev)
        cos_hf, sin_hf = (torch.cat((t, t), dim=-1)[None].to(dtype) for t in (cos, sin))
        return Inputs((q, k, cos, sin, cos_hf, sin_hf), (q, k), (grad_like(gen, q), grad_like(gen, k)))

    def make_attention(gen, dev, dtype):
        q = _randn(gen, (batch, seq_len, hq, d), dev, dtype)
        k, val = (_randn(gen, (batch, seq_len, hkv, d), dev, dtype) for _ in range(2))
        return Inputs((q, k, val), (q, k, val), (grad_like(gen, q),))

    def make_lce(gen, dev, dtype):
        h = _randn(gen, (n, c), dev, dtype)
        w = _randn(gen, (v, c), dev, dtype, scale=0.02)
        t = torch.randint(0, v, (n,), generator=gen, device=dev)
        loss_grad = torch.rand((), generator=gen, device=dev) + 0.5  # the loss is a float32 scalar
        return Inputs((h, w, t), (h, w), (loss_grad,))

    def split(fwd: float, bwd: float) -> dict[str, float]:
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}

    # Bytes a memory-bound pass must move at least: read every input once, write every output once.
    add("rms_norm", f"{n}x{c}", make_rms_norm, split(2 * n * c * e, 3 * n * c * e), True)
    add("add_rms_norm", f"{n}x{c}", make_add_rms_norm, split(4 * n * c * e, 4 * n * c * e), True)
    add("swiglu", f"{n}x{i}", make_swiglu, split(3 * n * i * e, 5 * n * i * e), True)
    qk = n * (hq + hkv) * d * e
    add("rope", f"{batch}x{seq_len}x({hq}+{hkv})x{d}", make_rope, split(2 * qk, 2 * qk), True)
    # Causal attention FLOPs (half of the full score and value matmuls); the backward does 2.5x.
    attn = 2.0 * batch * hq * seq_len * seq_len * d
    add("attention", f"{batch}x{seq_len}x{hq}/{hkv}x{d}", make_attention, split(attn, 2.5 * attn), False)
    add("fused_linear_cross_entropy", f"{n}x{c}->{v}", make_lce, split(2.0 * n * v * c, 4.0 * n * v * c), False)
    return cases


def all_cases(device: torch.device) -> list[OpCase]:
    """Every op case for `device`: the presets' real shapes on a GPU, a tiny one on CPU."""
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    return [case for preset, batch, seq_len in shapes
            for case in op_cases(model_config(preset), preset, batch, seq_len, device)]
