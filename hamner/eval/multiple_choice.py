"""Multiple-choice accuracy in the HellaSwag jsonl format, scored as llm.c's hellaswag.py scores it.

Each line is {"ctx": str, "endings": [4 str], "label": int} (the label may be a numeral string,
as in the Hugging Face copy). Every ending is read after its context (" " + ending, so the words
tokenize as in running text) and the model's log-probability of the ending's tokens is summed:
  accuracy        the ending with the highest total log-probability is the answer;
  accuracy_norm   the highest mean log-probability per ending token (length-normalised), the
                  number llm.c and modded-nanogpt report.
The file stays local: download HellaSwag's validation split yourself (for example
hellaswag_val.jsonl from the rowanz/hellaswag repository) and pass its path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hamner.data.tokenizer import Tokenizer
from hamner.errors import EvalError
from hamner.model.transformer import HamnerModel

CHOICES = 4


@dataclass(frozen=True)
class Item:
    """One question: the context, its candidate endings and the index of the right one."""

    ctx: str
    endings: tuple[str, ...]
    label: int


def load_items(path: str | Path, limit: int | None = None) -> list[Item]:
    """The items of a HellaSwag-format jsonl file; a malformed line is an EvalError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no multiple-choice file at {path}")
    items = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EvalError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise EvalError(f"{where}: expected an object with ctx, endings and label")
            ctx, endings, label = row.get("ctx"), row.get("endings"), row.get("label")
            if not isinstance(ctx, str) or not ctx.strip():
                raise EvalError(f"{where}: ctx must be a non-empty string, got {ctx!r}")
            if (not isinstance(endings, list) or len(endings) != CHOICES
                    or not all(isinstance(e, str) and e.strip() for e in endings)):
                raise EvalError(f"{where}: endings must be a list of {CHOICES} non-empty strings")
            if isinstance(label, str) and label.strip().isdigit():
                label = int(label)
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < CHOICES:
                raise EvalError(f"{where}: label must be 0..{CHOICES - 1}, got {row.get('label')!r}")
            items.append(Item(ctx=ctx, endings=tuple(endings), label=label))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise EvalError(f"{path} holds no items")
    return items


@torch.no_grad()
def ending_log_probs(model: HamnerModel, tokenizer: Tokenizer, item: Item) -> list[tuple[float, int]]:
    """(total log-probability, token count) of each ending after the context. A context too long
    for the model loses its oldest tokens; an ending always keeps all of its own."""
    device = next(model.parameters()).device
    context = tokenizer.encode(item.ctx)
    scores = []
    for ending in item.endings:
        tail = tokenizer.encode(" " + ending)
        if len(tail) > model.config.max_seq_len:
            raise EvalError(f"an ending of {len(tail)} tokens does not fit the model's context of "
                            f"{model.config.max_seq_len} beside its ctx: {ending[:40]!r}...")
        ids = (context + tail)[-model.config.max_seq_len - 1:]
        x = torch.tensor(ids, device=device)
        logits = model(x[None, :-1])[0, -len(tail):]
        log_probs = F.log_softmax(logits.float(), dim=-1).gather(1, x[-len(tail):, None])
        scores.append((float(log_probs.sum()), len(tail)))
    return scores


def multiple_choice_accuracy(model: HamnerModel, tokenizer: Tokenizer, items: list[Item]) -> dict:
    """Accuracy by total and by per-token log-probability over `items`."""
    right = right_norm = 0
    for item in items:
        scores = ending_log_probs(model, tokenizer, item)
        right += max(range(CHOICES), key=lambda i: scores[i][0]) == item.label
        right_norm += max(range(CHOICES), key=lambda i: scores[i][0] / scores[i][1]) == item.label
    return {"items": len(items), "accuracy": right / len(items), "accuracy_norm": right_norm / len(items)}
