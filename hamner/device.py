"""The torch device a command runs on, shared by training, chat, evaluation and export."""
from __future__ import annotations

import torch

from hamner.errors import DeviceError


def pick_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; anything else must be a device torch knows and has.

    Raises DeviceError with a one-line message for an unknown or unavailable device.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} asked for, but MPS is not available")
    return device
