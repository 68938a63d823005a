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
    bytes_per_token: float | None = None  # UTF-8 bytes per target token of this rank's batches, when counted


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
        self._text: list[torch.Tensor] = []  # [bytes, tokens] of each counted step's targets

    def add_text(self, n_bytes: torch.Tensor, n_tokens: torch.Tensor) -> None:
        """The UTF-8 bytes and the counted target tokens of one step (for bits per byte), left on the device."""
        self._text.append(torch.stack([n_bytes.float(), n_tokens.float()]))

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
        text = torch.stack(self._text).sum(0) if self._text else torch.zeros(2, device=self._streak.device)
        packed = torch.cat([losses, torch.stack(self._norms), counters.float(), text]).tolist()
        n, counted = len(self._losses), bool(self._text)
        self._clear()
        bytes_per_token = packed[-2] / packed[-1] if counted and packed[-1] > 0 else None
        return WindowRead(packed[:n], packed[n:2 * n], int(packed[-4]), int(packed[-3]), bytes_per_token)


class MetricsWindow:
    """Values read but not yet written as a row, the run's non-finite counts, and every row's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.bad_total = 0
        self.worst_streak = 0  # longest run of non-finite losses since this process started
        self.logged: list[float] = []  # the loss of every row written by this process
        self.bytes_per_token: float | None = None  # of the newest window read that counted bytes

    def add(self, read: WindowRead) -> None:
        self.losses += read.losses
        self.grad_norms += read.grad_norms
        self.bad_total += read.bad
        self.worst_streak = max(self.worst_streak, read.max_streak)
        if read.bytes_per_token is not None:
            self.bytes_per_token = read.bytes_per_token

    @property
    def pending(self) -> bool:
        """Whether steps were read that no row holds yet."""
        return bool(self.losses)

    def take_row(self, step: int, stage: str, **columns: Any) -> dict[str, Any]:
        """The metrics row for the values read since the last row (non-finite ones left out of the
        means), with the training bits per byte (bpc: loss / ln 2 / UTF-8 bytes per token) when the bytes
        were counted; `columns` are the other cells (lr, tokens, val_loss, ...)."""
        losses = [v for v in self.losses if math.isfinite(v)]
        norms = [v for v in self.grad_norms if math.isfinite(v)]
        loss = sum(losses) / len(losses) if losses else None
        if loss is not None:
            self.logged.append(loss)
        self.losses, self.grad_norms = [], []
        bpc = None
        if loss is not None and self.bytes_per_token:
            bpc = loss / math.log(2) / self.bytes_per_token
        return {"step": step, "stage": stage, "loss": loss, "bpc": bpc,
                "grad_norm": sum(norms) / len(norms) if norms else None, **columns}

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "grad_norms": self.grad_norms, "bad_total": self.bad_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.grad_norms = list(state["losses"]), list(state["grad_norms"])
        self.bad_total = int(state["bad_total"])


def format_row(row: dict[str, Any], bad_total: int, expert_load: torch.Tensor | None = None) -> str:
    """The train.log / console line of a metrics row; `expert_load` is the model's (MoE models only)."""
    loss, val_loss, mfu = row["loss"], row.get("val_loss"), row.get("mfu")
    parts = [f"step {row['step']}", f"stage {row['stage']}", f"loss {loss:.4f}" if loss is not None else "loss nan"]
    if row.get("bpc") is not None:
        parts.append(f"bpc {row['bpc']:.4f}")
    if val_loss is not None:
        parts.append(f"val {val_loss:.4f}")
    parts += [f"lr {row['lr']:.2e}", f"{row['tokens_per_s']:,.0f} tok/s"]
    if mfu is not None:
        parts.append(f"mfu {100 * mfu:.1f}%")
    if bad_total:
        parts.append(f"{bad_total} skipped")
    if expert_load is not None:  # the busiest expert's share relative to an even split (1.00 = balanced)
        parts.append(f"expert load max {float(expert_load.max()) * expert_load.shape[1]:.2f}")
    return " | ".join(parts)
