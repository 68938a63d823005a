"""Kernel regression benchmarks: every op x variant x pass x shape, with pytest-benchmark.

Each test first checks the variant's outputs and input gradients against the fp32 reference (so a
fast but wrong kernel fails instead of winning), then times the pass with `benchmark.pedantic`.
The timer is `timing.bench_clock`: on a GPU it reads CUDA events, so the stats pytest-benchmark
prints, saves and compares are GPU time. Inputs rotate over enough copies to defeat the L2 cache.
`benchmark.extra_info` gets the achieved GB/s (memory-bound ops) next to the device's copy
bandwidth, or TFLOP/s (attention, fused linear cross-entropy), and the peak memory of one call.

Passes: "fwd" is the training forward (autograd records the graph); "bwd" is the backward alone,
the forward having run untimed just before; "fwd+bwd" is both. Groups are op/shape/pass, so
`--benchmark-compare` and the printed tables put the variants of one op at one shape side by side.
On CPU (CI) the shapes are tiny, only the plain-PyTorch variants run, and the timings are marked
as not meaningful.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from kernel_cases import EAGER, HAMNER, PASSES, SEED, Inputs, OpCase, all_cases, bench_device, bench_dtype, op_cases
from timing import bench_clock, gbps, peak_memory_bytes, rotation_sets, tflops

from hamner.kernels import dispatch
from hamner.model.config import model_config

DEVICE = bench_device()
CASES = all_cases(DEVICE)
PARAMS = [
    pytest.param(case, variant, step, id=f"{case.op}-{case.shape}-{step}-{variant}")
    for case in CASES for step in PASSES for variant in case.variant_names
]
# Normwise relative error allowed against the fp32 reference, by the dtype the variant runs in.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
# Seconds of timed rounds aimed for on a GPU, and the bounds on the round count.
GPU_SECONDS, MIN_ROUNDS, MAX_ROUNDS = 0.5, 10, 200
CPU_ROUNDS = 3

pytestmark = pytest.mark.benchmark(timer=bench_clock)

_expected: dict[tuple[str, str, str], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}


def _inputs(case: OpCase, index: int) -> Inputs:
    gen = torch.Generator(DEVICE).manual_seed(SEED + index)
    return case.make_inputs(gen, DEVICE, bench_dtype(DEVICE))


def _run(fn, inputs: Inputs, backward: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outputs = fn(*inputs.args)
    grads = torch.autograd.grad(outputs, inputs.leaves, inputs.cotangents) if backward else ()
    return [o.detach() for o in outputs], list(grads)


def _upcast(inputs: Inputs) -> Inputs:
    """The same input set in float32, leaves still requiring grad."""
    fp32 = {id(t): t.detach().float().requires_grad_(t.requires_grad)
            for t in inputs.args if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return Inputs(tuple(fp32.get(id(a), a) for a in inputs.args),
                  tuple(fp32[id(t)] for t in inputs.leaves),
                  tuple(c.float() for c in inputs.cotangents))


def expected(case: OpCase) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """fp32 reference outputs and input gradients of input set 0 (the last case's are kept)."""
    key = (case.op, case.shape, case.dims)
    if key not in _expected:
        _expected.clear()
        _expected[key] = _run(EAGER[case.op], _upcast(_inputs(case, 0)), backward=True)
    return _expected[key]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, in float32."""
    want = want.float()
    return float((got.float() - want).norm() / want.norm().clamp_min(1e-30))


def check_against_reference(case: OpCase, variant: str) -> float:
    """Largest relative error of the variant's outputs and gradients; fails the test above tolerance."""
    want_out, want_grad = expected(case)
    got_out, got_grad = _run(case.variants[variant], _inputs(case, 0), backward=True)
    tol = TOLERANCE[bench_dtype(DEVICE)]
    worst = 0.0
    for kind, got, want in (("output", got_out, want_out), ("gradient", got_grad, want_grad)):
        assert len(got) == len(want), f"{variant} {case.op}: {len(got)} {kind}s, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape, f"{variant} {case.op} {kind} {i}: shape {tuple(g.shape)} != {tuple(w.shape)}"
            err = relative_error(g, w)
            assert err <= tol, f"{variant} {case.op} {kind} {i}: relative error {err:.2e} > {tol:.0e}"
            worst = max(worst, err)
    return worst


def make_pass(case: OpCase, variant: str, step: str, sets: list[Inputs]):
    """(prepare(i), run(i)): prepare is the untimed part before each timed call (the forward of "bwd")."""
    fn = case.variants[variant]
    pending: dict[int, tuple] = {}

    def backward(outputs: tuple, i: int) -> None:
        torch.autograd.grad(outputs, sets[i].leaves, sets[i].cotangents)

    if step == "fwd":
        return None, lambda i: fn(*sets[i].args)
    if step == "bwd":
        return (lambda i: pending.__setitem__(i, fn(*sets[i].args))), (lambda i: backward(pending.pop(i), i))
    return None, lambda i: backward(fn(*sets[i].args), i)


def _rounds(run, prepare, n_sets: int) -> int:
    """Timed rounds: CPU_ROUNDS on CPU; on a GPU about GPU_SECONDS worth, from three trial calls."""
    if DEVICE.type != "cuda":
        return CPU_ROUNDS
    trials = []
    for i in range(3):
        if prepare:
            prepare(i % n_sets)
        start = bench_clock()
        run(i % n_sets)
        trials.append(bench_clock() - start)
    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(GPU_SECONDS / max(min(trials), 1e-6))))


@pytest.mark.parametrize(("case", "variant", "step"), PARAMS)
def test_kernel(benchmark, case: OpCase, variant: str, step: str, copy_gbps: float) -> None:
    if variant in case.skips:
        pytest.skip(case.skips[variant])
    benchmark.group = f"{case.group} {step}"
    max_error = check_against_reference(case, variant)

    set_bytes = _inputs(case, 0).nbytes()
    n_sets = rotation_sets(set_bytes, DEVICE) if case.memory_bound else 1
    sets = [_inputs(case, i) for i in range(n_sets)]
    prepare, run = make_pass(case, variant, step, sets)
    counter = itertools.count()

    def setup():
        i = next(counter) % n_sets
        if prepare:
            prepare(i)
        return (i,), {}

    rounds = _rounds(run, prepare, n_sets)
    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)

    if prepare:
        prepare(0)
    peak = peak_memory_bytes(lambda: run(0), DEVICE)
    info = {
        "op": case.op, "variant": variant, "pass": step, "shape": case.shape, "dims": case.dims,
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "dtype": str(bench_dtype(DEVICE)).removeprefix("torch."),
        "timing_meaningful": DEVICE.type == "cuda",
        "max_relative_error": max_error,
        "rotation_sets": n_sets,
        "peak_memory_mb": None if peak is None else peak / 2**20,
        "copy_gbps": copy_gbps,
    }
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when --benchmark-disable ran the pass once without timing it
        median_ms = stats.stats.median * 1e3
        info["median_ms"] = median_ms
        work = case.work[step]
        if case.memory_bound:
            info["gbps"] = gbps(work, median_ms)
            info["fraction_of_copy"] = info["gbps"] / copy_gbps
        else:
            info["tflops"] = tflops(work, median_ms)
        assert math.isfinite(median_ms) and median_ms > 0
    benchmark.extra_info.update(info)


def test_reference_check_rejects_a_wrong_variant() -> None:
    """The check that guards every timing fails a variant that computes something else (no rotation)."""
    rope = next(case for case in CASES if case.op == "rope")
    wrong = dataclasses.replace(rope, variants={"unrotated": lambda q, k, *tables: (q * 1.0, k * 1.0)})
    with pytest.raises(AssertionError, match="relative error"):
        check_against_reference(wrong, "unrotated")


@pytest.mark.skipif(DEVICE.type == "cuda" or not dispatch.INTERPRET,
                    reason="for CPU runs with TRITON_INTERPRET=1 set before triton is imported (tests/ sets it)")
def test_hamner_variants_run_in_the_interpreter() -> None:
    """The GPU-only path (our kernels: reference check, then every pass) works, interpreted at a tiny shape."""
    before = dispatch.launches.copy()
    with dispatch.cpu_kernels(True):
        for case in op_cases(model_config("demo"), "demo", 2, 16, DEVICE):
            ours = dataclasses.replace(case, variants={"hamner": HAMNER[case.op]}, skips={})
            check_against_reference(ours, "hamner")
            for step in PASSES:
                prepare, run = make_pass(ours, "hamner", step, [_inputs(ours, 0)])
                if prepare:
                    prepare(0)
                run(0)
    launched = dispatch.launches - before
    for kernel in ("rms_norm_fwd", "rms_norm_bwd", "add_rms_norm_fwd", "swiglu_fwd", "swiglu_bwd", "rope",
                   "fused_linear_cross_entropy"):
        assert launched[kernel] > 0, kernel
