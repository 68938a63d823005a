"""Throughput figures for the training log: tokens/s over the last interval and model FLOPs utilisation.

MFU = model FLOPs per token x tokens/s / the device's peak dense bf16 FLOP/s. Peaks come from a
small table of common GPUs matched by device name; an unknown device (and every CPU) has no MFU.
"""
from __future__ import annotations

import time

import torch

# Peak dense bf16 tensor-core FLOP/s, matched by substring of the CUDA device name (first match wins).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of `device`, or None when it is not in the table (CPUs, MPS, unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


class IntervalMeter:
    """Tokens/s and MFU over the time since the previous reading, not averaged over the whole run.

    Time handed to `exclude()` (evaluation, checkpoints, samples) is left out."""

    def __init__(self, flops_per_token: float, peak: float | None) -> None:
        self.flops_per_token = flops_per_token
        self.peak = peak
        self._start = time.perf_counter()
        self._excluded = 0.0
        self._tokens = 0
        self._flops = 0.0

    def add_tokens(self, n: int) -> None:
        """Count `n` tokens trained on at the current `flops_per_token` (a seq_len ramp changes it between steps)."""
        self._tokens += n
        self._flops += n * self.flops_per_token

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` of the current interval out of the rate."""
        self._excluded += seconds

    def read(self) -> tuple[float, float | None]:
        """(tokens/s, MFU or None) since the last read; starts the next interval."""
        now = time.perf_counter()
        seconds = max(now - self._start - self._excluded, 1e-9)
        rate = self._tokens / seconds
        mfu = self._flops / seconds / self.peak if self.peak else None
        self._start, self._excluded, self._tokens, self._flops = now, 0.0, 0, 0.0
        return rate, mfu
