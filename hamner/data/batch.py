"""A training batch as one value: everything a step feeds the model, made once by the data layer.

Rows of T + 1 tokens become idx = rows[:, :-1] and targets = rows[:, 1:], a target whose loss mask
is 0 becoming the ignored index. When the rows pack documents that must stay apart, the batch also
carries each token's document id (a new document starts after each end-of-text token), so neither
the loss nor validation has to find the documents again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hamner.data.loss_masks import targets_from_mask
from hamner.model.packing import document_ids


@dataclass(frozen=True, eq=False)
class Batch:
    """Inputs, targets and (under document packing) document ids of one batch of rows."""

    idx: torch.Tensor  # [B, T] int64 input token ids
    targets: torch.Tensor  # [B, T] int64 next tokens; IGNORE_INDEX where the loss mask leaves one out
    segment_ids: torch.Tensor | None = None  # [B, T] int32 document ids; None: each row is one stream

    @classmethod
    def from_rows(cls, rows: np.ndarray, masks: np.ndarray | None = None,
                  document_end: int | None = None) -> Batch:
        """The batch of `rows` ([B, T + 1] token ids) with their uint8 loss `masks` (None: every token
        counts); `document_end` is the end-of-text id when documents stay apart (None: they do not)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] < 2:
            raise ValueError(f"rows of shape {rows.shape}; expected [batch, row_len >= 2]")
        idx = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
        segments = None if document_end is None else document_ids(idx, document_end)
        return cls(idx, torch.from_numpy(targets_from_mask(rows, masks)), segments)

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory, so a copy to a GPU can overlap compute."""
        return Batch(*(None if t is None else t.pin_memory() for t in (self.idx, self.targets, self.segment_ids)))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on `device`."""
        return Batch(*(None if t is None else t.to(device, non_blocking=non_blocking)
                       for t in (self.idx, self.targets, self.segment_ids)))
