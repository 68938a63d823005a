"""Length generalisation: how the loss behaves at positions past the context the model trained on.

As in the TTT length-generalisation study, the model reads one long sequence in a single
forward pass (RoPE positions continue past `max_seq_len`; no sliding window, nothing trimmed),
and we report the loss of the predictions made at positions [k W, (k + 1) W) for k in
`multiples`, W being a window that defaults to the model's `max_seq_len`. k = 0 is the
training regime; k >= 1 is extrapolation. The sequence is a stretch of a token stream (for
example a validation split: documents joined by end-of-text), so the numbers measure position
handling, not long-range recall. Several stretches are averaged.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from hamner.errors import EvalError
from hamner.model.transformer import HamnerModel

MULTIPLES: tuple[int, ...] = (0, 1, 2, 5, 10, 20)


def extended_model(model: HamnerModel, max_seq_len: int) -> HamnerModel:
    """A copy of `model` whose RoPE tables reach `max_seq_len` positions (same weights, same device)."""
    if max_seq_len <= model.config.max_seq_len:
        return model
    param = next(model.parameters())
    longer = HamnerModel(dataclasses.replace(model.config, max_seq_len=max_seq_len))
    longer.load_state_dict(model.state_dict())
    return longer.to(device=param.device, dtype=param.dtype).eval()


@torch.no_grad()
def length_generalisation(model: HamnerModel, tokens: np.ndarray, *, window: int | None = None,
                          multiples: tuple[int, ...] = MULTIPLES, sequences: int = 1) -> list[dict[str, float]]:
    """Per multiple k: loss and perplexity of the chunk at [k W, (k + 1) W), averaged over `sequences`
    non-overlapping stretches of `tokens`. Multiples whose chunk does not fit in `tokens` are left out;
    raises EvalError when none fits."""
    window = window or model.config.max_seq_len
    fitting = [k for k in sorted(set(multiples)) if (k + 1) * window + 1 <= len(tokens)]
    if not fitting:
        raise EvalError(f"length generalisation needs at least {window + 1} tokens (window {window}), "
                        f"got {len(tokens)}")
    span = (fitting[-1] + 1) * window
    sequences = max(1, min(sequences, (len(tokens) - 1) // span))
    long_model = extended_model(model, span)
    device = next(long_model.parameters()).device
    nats = {k: 0.0 for k in fitting}
    for s in range(sequences):
        seq = torch.from_numpy(np.asarray(tokens[s * span: (s + 1) * span + 1], dtype=np.int64)).to(device)
        hidden = long_model.hidden_states(seq[None, :-1])[0]
        for k in fitting:
            chunk = slice(k * window, (k + 1) * window)
            logits = long_model.logits(hidden[chunk])
            nats[k] += float(F.cross_entropy(logits, seq[1:][chunk], reduction="sum"))
    rows = []
    for k in fitting:
        loss = nats[k] / (sequences * window)
        rows.append({"multiple": k, "start": k * window, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                     "tokens": sequences * window})
    return rows
