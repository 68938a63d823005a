"""Parallelism for the training loop: process-group setup under torchrun, DDP wrapping, rank helpers.

The loop itself never asks whether it runs distributed; it calls these helpers, which are no-ops in a
single process. Under `torchrun` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; NCCL is used
on CUDA and gloo elsewhere. Every rank draws different data (the sampler is given rank and world
size) and only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

_flag_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process job (torchrun sets these variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (NCCL on CUDA, gloo otherwise); else a single process."""
    if not launched_by_torchrun():
        return DistInfo()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    global _flag_group
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    # Stop flags travel through a gloo group on the host, so checking them never waits on the GPU.
    _flag_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU under torchrun, else the requested device."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed, the model itself otherwise."""
    if not info.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when `flag` is true on at least one (a host-side all-reduce; free when single)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_flag_group)
    return bool(value.item())


def min_over_ranks(value: int | None, info: DistInfo) -> int | None:
    """The smallest `value` (>= 0) over all ranks, None when any rank has None (a host-side all-reduce; free
    when single)."""
    if not info.enabled:
        return value
    reduced = torch.tensor([-1 if value is None else value], dtype=torch.int64)  # None travels as -1
    dist.all_reduce(reduced, op=dist.ReduceOp.MIN, group=_flag_group)
    return None if reduced.item() < 0 else int(reduced.item())


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of `value` over all ranks (the value itself when single)."""
    if not info.enabled:
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / info.world_size


def max_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise maximum of `value` over all ranks (the value itself when single)."""
    if not info.enabled:
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when single)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
