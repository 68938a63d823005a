"""Probes of what a model learned: exact-match accuracy on prompt/answer pairs, trained and held-out apart.

A probe is a JSON-lines file, one item per line: `{"prompt": ..., "answer": ..., "trained": true}`
(optional `"kind"` groups items in the report), or the name of a built-in set: "concepts" (the
seven kinds of data.concepts) or "concepts/<kind>" (one of them, or an experiment kind: "echo",
"composition", "capacity-N"). The model decodes greedily after the prompt
(preceded by end-of-text, as a packed training document is, unless `document_start`), stops at
end-of-text, a newline or a chat turn marker, and scores an item when what it wrote, stripped,
is exactly the answer. Items marked trained measure memorisation; the others generalisation.

`hamner eval RUN --probe FILE_OR_NAME` prints the table; a curriculum's `probe = ...` scores it
at every stage end into probe.csv.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hamner.data.chat_format import STOP_STRINGS
from hamner.data.tokenizer import Tokenizer
from hamner.errors import DataError
from hamner.use.generate import generate

SPLITS = ("trained", "held_out")
STOPS = ("\n",) + STOP_STRINGS  # an answer is one line
BATCH = 64


@dataclass(frozen=True)
class ProbeItem:
    prompt: str
    answer: str
    trained: bool
    kind: str = "all"


def load_probe(spec: str) -> list[ProbeItem]:
    """Items of a probe file (JSONL) or of a built-in set ("concepts", "concepts/<kind>"); DataError on bad input."""
    from hamner.data import concepts

    if spec == concepts.PREFIX or spec.startswith(concepts.PREFIX + "/"):
        kind = concepts.parse_source_name(spec)
        return [ProbeItem(concepts.probe_prompt(i), i.answer, i.trained, i.kind)
                for i in concepts.concept_items(kind)]
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"probe {spec!r} is neither a file nor a built-in probe (concepts, concepts/<kind>)")
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read probe {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            items.append(_item(line, f"{path} line {n}"))
    if not items:
        raise DataError(f"probe {path} holds no items")
    return items


def _item(line: str, where: str) -> ProbeItem:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise DataError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with prompt, answer and trained")
    for key, kind in (("prompt", str), ("answer", str), ("trained", bool)):
        if not isinstance(record.get(key), kind):
            raise DataError(f"{where}: field {key!r} must be {'true/false' if kind is bool else 'a string'}")
    if not record["answer"].strip():
        raise DataError(f"{where}: the answer is empty")
    return ProbeItem(record["prompt"], record["answer"], record["trained"], str(record.get("kind", "all")))


@torch.no_grad()
def score_probe(model: torch.nn.Module, tokenizer: Tokenizer, items: list[ProbeItem],
                document_start: bool = False) -> list[dict]:
    """Rows {kind, split, correct, total, accuracy}: per kind and split, then kind "all" per split."""
    hits: dict[tuple[str, str], list[int]] = {}
    lead = [] if document_start else [tokenizer.eos_id]
    for start in range(0, len(items), BATCH):
        batch = items[start:start + BATCH]
        prompts = [lead + tokenizer.encode(item.prompt) for item in batch]
        longest = max(len(tokenizer.encode(item.answer)) for item in batch)
        # Room for the answer and the token that ends it.
        outs = generate(model, prompts, longest + 2, temperature=0.0, eos_id=tokenizer.eos_id,
                        stop_strings=STOPS, decode=tokenizer.decode)
        for item, out in zip(batch, outs):
            correct = int(tokenizer.decode(out).strip() == item.answer.strip())
            split = SPLITS[0] if item.trained else SPLITS[1]
            for kind in dict.fromkeys((item.kind, "all")):
                hits.setdefault((kind, split), []).append(correct)
    kinds = list(dict.fromkeys(item.kind for item in items if item.kind != "all")) + ["all"]
    return [{"kind": kind, "split": split, "correct": sum(hits[kind, split]), "total": len(hits[kind, split]),
             "accuracy": sum(hits[kind, split]) / len(hits[kind, split])}
            for kind in kinds for split in SPLITS if (kind, split) in hits]


def format_probe(rows: list[dict]) -> str:
    """A table: one line per kind, trained and held-out accuracy (correct/total)."""
    cells = {(r["kind"], r["split"]): f"{100 * r['accuracy']:.0f}% ({r['correct']}/{r['total']})" for r in rows}
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    width = max(len("kind"), *(len(k) for k in kinds))
    lines = ["kind".ljust(width) + "".join(f"{s:>18}" for s in SPLITS)]
    lines += [k.ljust(width) + "".join(f"{cells.get((k, s), '-'):>18}" for s in SPLITS) for k in kinds]
    return "\n".join(lines)
