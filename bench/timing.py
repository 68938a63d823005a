"""Timing helpers shared by the kernel benchmarks: CUDA-event clock, L2 rotation, GB/s, memory, copy bandwidth.

On CUDA, time is read off CUDA events (`bench_clock` for pytest-benchmark, `time_calls` for a
list of per-call timings) after warm-up, and medians are reported. Inputs are rotated over enough
copies that together they exceed the L2 cache several times, so no call reads data the previous
call left in L2. Achieved bandwidth is compared with the device's own copy bandwidth (a
device-to-device copy of a large buffer). On CPU the same functions run with `time.perf_counter`,
so CI keeps the code alive, but those figures are not meaningful.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable

import torch

# The inputs cycled through per benchmark total at least this many times the L2 size.
L2_MULTIPLE: int = 3
# Most input copies a benchmark keeps (bounds the memory small ops spend on rotation).
MAX_SETS: int = 64
# Bytes copied by the copy-bandwidth probe.
COPY_BYTES_CUDA: int = 2**30
COPY_BYTES_CPU: int = 2**24


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_origin: list[torch.cuda.Event] = []


def bench_clock() -> float:
    """pytest-benchmark timer: seconds on the GPU's own clock when CUDA is present, else perf_counter.

    Each reading records a CUDA event and waits for it, so the time between two readings is the
    GPU time of the work queued between them, without the host's synchronisation overhead.
    """
    if not torch.cuda.is_available():
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    if not _origin:
        _origin.append(event)
    return _origin[0].elapsed_time(event) / 1e3


def l2_bytes(device: torch.device) -> int:
    """L2 cache size of a CUDA device (64 MiB if torch does not say); 0 elsewhere (CPU timings are not meaningful)."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20))


def rotation_sets(bytes_per_set: int, device: torch.device) -> int:
    """How many copies of an input set to cycle through so that their total is L2_MULTIPLE x L2.

    A set already that large needs only one copy; the count never exceeds MAX_SETS.
    """
    l2 = l2_bytes(device)
    if l2 == 0 or bytes_per_set >= L2_MULTIPLE * l2:
        return 1
    return min(MAX_SETS, 1 + math.ceil(L2_MULTIPLE * l2 / max(bytes_per_set, 1)))


def time_calls(fn: Callable[[int], object], n_sets: int, device: torch.device,
               warmup: int, reps: int) -> list[float]:
    """Milliseconds of `reps` calls fn(i % n_sets), each timed alone after `warmup` untimed calls.

    CUDA: a start/end event pair per call, read after one final synchronisation. CPU: perf_counter.
    """
    for i in range(warmup):
        fn(i % n_sets)
    synchronize(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            starts[i].record()
            fn(i % n_sets)
            ends[i].record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i % n_sets)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(times: list[float]) -> float:
    """Median of a list of millisecond timings."""
    return float(statistics.median(times))


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes allocated at the peak of one call of `fn` above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def gbps(n_bytes: float, ms: float) -> float:
    """Achieved bandwidth in GB/s (1e9 bytes) for `n_bytes` moved in `ms` milliseconds."""
    return n_bytes / (ms * 1e-3) / 1e9


def tflops(flops: float, ms: float) -> float:
    """Achieved TFLOP/s for `flops` done in `ms` milliseconds."""
    return flops / (ms * 1e-3) / 1e12


@functools.cache
def copy_bandwidth_gbps(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written), median of 20 copies."""
    n_bytes = COPY_BYTES_CUDA if device.type == "cuda" else COPY_BYTES_CPU
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    times = time_calls(lambda _: dst.copy_(src), 1, device, warmup=3, reps=20)
    return gbps(2 * n_bytes, median_ms(times))
