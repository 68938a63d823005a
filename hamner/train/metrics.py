"""Training metrics between two metrics rows: kept on the device per step, read by the host per row.

`DeviceWindow` holds what each step leaves on the device (loss, gradient norm, the non-finite
streak and count) without reading it, so the loop never waits for the GPU per step; `read()` takes
all of it in one transfer at a log interval (and before checkpoints and stage ends), the same on
every rank. `MetricsWindow` keeps those host values until they become one metrics.csv row, and
counts skipped steps over the whole run; its unwritten values travel with checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hamner.train import distributed as dist
from hamner.train.step import StepResult


@dataclass(frozen=True)
class WindowRead:
    """The host values of the steps since the previous read."""

    losses: list[float]
    grad_norms: list[float]
    max_streak: int  # longest run of non-finite steps seen in the window (any rank)
    bad: int  # non-finite steps in the window (the most of any rank)


class DeviceWindow:
    """Step results on the device, read together."""

    def __init__(self, device: torch.device) -> None:
        self._streak = torch.zeros((), dtype=torch.int32, device=device)  # carried across reads
        self._clear()

    def _clear(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []
        self._max_streak = self._streak.clone()
        self._bad = torch.zeros_like(self._streak)

    def add(self, result: StepResult) -> None:
        bad = ~result.finite
        self._streak = torch.where(bad, self._streak + 1, torch.zeros_like(self._streak))
        self._max_streak = torch.maximum(self._max_streak, self._streak)
        self._bad += bad.int()
        self._losses.append(result.loss)
        self._norms.append(result.grad_norm)

    def read(self, info: dist.DistInfo) -> WindowRead | None:
        """One host sync: losses averaged over ranks, counters the worst of any rank; then empty."""
        if not self._losses:
            return None
        losses = dist.mean_over_ranks(torch.stack(self._losses), info)
        counters = dist.max_over_ranks(torch.stack([self._max_streak, self._bad]), info)
        packed = torch.cat([losses, torch.stack(self._norms), counters.float()]).tolist()
        n = len(self._losses)
        self._clear()
        return WindowRead(packed[:n], packed[n:2 * n], int(packed[-2]), int(packed[-1]))


class MetricsWindow:
    """Values read but not yet written as a row, the run's non-finite counts, and every row's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.bad_total = 0
        self.worst_streak = 0  # longest run of non-finite losses since this process started
        self.logged: list[float] = []  # the loss of every row written by this process

    def add(self, read: WindowRead) -> None:
        self.losses += read.losses
        self.grad_norms += read.grad_norms
        self.bad_total += read.bad
        self.worst_streak = max(self.worst_streak, read.max_streak)

    @property
    def pending(self) -> bool:
        """Whether steps were read that no row holds yet."""
        return bool(self.losses)

    def take_row(self, step: int, stage: str, **columns: Any) -> dict[str, Any]:
        """The metrics row for the values read since the last row (non-finite ones left out of the
        means); `columns` are the other cells (lr, tokens, val_loss, ...)."""
        losses = [v for v in self.losses if math.isfinite(v)]
        norms = [v for v in self.grad_norms if math.isfinite(v)]
        loss = sum(losses) / len(losses) if losses else None
        if loss is not None:
            self.logged.append(loss)
        self.losses, self.grad_norms = [], []
        return {"step": step, "stage": stage, "loss": loss,
                "grad_norm": sum(norms) / len(norms) if norms else None, **columns}

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "grad_norms": self.grad_norms, "bad_total": self.bad_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.grad_norms = list(state["losses"]), list(state["grad_norms"])
        self.bad_total = int(state["bad_total"])


def format_row(row: dict[str, Any], bad_total: int, expert_load: torch.Tensor | None = None,
               peak_memory: int | None = None) -> str:
    """The train.log / console line of a metrics row; `expert_load` is the model's (MoE models only),
    `peak_memory` the most bytes the device has held (CUDA only; `hamner status` reads it back)."""
    loss, val_loss, mfu = row["loss"], row.get("val_loss"), row.get("mfu")
    parts = [f"step {row['step']}", f"stage {row['stage']}", f"loss {loss:.4f}" if loss is not None else "loss nan"]
    if val_loss is not None:
        parts.append(f"val {val_loss:.4f}")
    parts += [f"lr {row['lr']:.2e}", f"{row['tokens_per_s']:,.0f} tok/s"]
    if mfu is not None:
        parts.append(f"mfu {100 * mfu:.1f}%")
    if bad_total:
        parts.append(f"{bad_total} skipped")
    if expert_load is not None:  # the busiest expert's share relative to an even split (1.00 = balanced)
        parts.append(f"expert load max {float(expert_load.max()) * expert_load.shape[1]:.2f}")
    if peak_memory is not None:
        parts.append(f"peak mem {peak_memory / 2**30:.1f} GiB")
    return " | ".join(parts)
