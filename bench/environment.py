"""What machine a benchmark ran on: device, GPU, driver and library versions, for the JSON records."""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys

import torch

from hamner import kernels


def package_version(package: str) -> str | None:
    """Installed version of `package`, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    """NVIDIA driver version from nvidia-smi, when it is there."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def environment(device: torch.device) -> dict:
    """Device, GPU name, driver, CUDA / torch / triton / transformers / liger-kernel versions, attention backend."""
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "driver": nvidia_driver() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "liger_kernel": package_version("liger-kernel"),
        "attention_backend": kernels.attention_backend() if cuda else "sdpa",
        "python": sys.version.split()[0],
    }
