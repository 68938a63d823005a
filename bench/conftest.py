"""Shared setup of the benchmarks: the repo on the path, the copy bandwidth, machine info, the CPU note.

Without a GPU the benchmarks still run (tiny shapes, plain-PyTorch variants) so CI keeps them
working; the session then ends with a note that the timings are not meaningful. Saved and JSON
runs carry the GPU, driver and versions in their machine_info.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # works without `pip install -e .` too

from environment import environment  # noqa: E402
from kernel_cases import bench_device  # noqa: E402
from timing import copy_bandwidth_gbps, l2_bytes  # noqa: E402

CPU_NOTE = ("bench: no GPU, so these are tiny CPU shapes and the timings are NOT meaningful "
            "(extra_info timing_meaningful=false); run `pytest bench/` on a GPU for real figures")
_ran_on_cpu: list[bool] = []


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    """The bench device's measured copy bandwidth in GB/s (read + write of a large buffer)."""
    return copy_bandwidth_gbps(bench_device())


@pytest.fixture(autouse=True)
def _note_cpu_mode() -> None:
    if bench_device().type != "cuda":
        _ran_on_cpu.append(True)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    device = bench_device()
    # Only what stays the same between runs on one machine (a measured figure would make every
    # --benchmark-compare warn that the machine changed); the copy bandwidth is in each extra_info.
    machine_info["hamner_bench"] = {
        **environment(device),
        "l2_bytes": l2_bytes(device),
        "timing_meaningful": device.type == "cuda",
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ran_on_cpu:
        terminalreporter.write_line(CPU_NOTE)
