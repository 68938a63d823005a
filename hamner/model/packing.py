"""Document-aware packing: rows packed from several documents, each document on its own.

A packed row holds documents back to back, each ended by the end-of-text token. With document
packing, attention stays inside each document (`kernels.attention(..., segment_ids=...)`) and
RoPE positions restart at 0 for each document, so a document sees exactly what it would see if
it were the only one in the row (the usual choice for fine-tuning on short conversations).
"""
from __future__ import annotations

import torch


def document_ids(idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] segment ids of token ids `idx`: a new document starts after each end-of-text token
    (the end-of-text token belongs to the document it closes)."""
    ends = (idx == eos_id).to(torch.int32)
    return torch.cumsum(ends, dim=1, dtype=torch.int32) - ends


def document_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] position of each token within its document (0 at every document's first token)."""
    steps = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.cummax(torch.where(starts, steps, torch.zeros_like(steps)), dim=1).values
    return steps - first
