"""Loss masks: which tokens of a document are targets the loss counts.

Chat-format documents (see data.chat_format) count the assistant's replies only: a token counts
when the character it starts at lies in one of `assistant_spans`, so the mask lines up with the
tokens of any tokenizer (merges across a span boundary go to the side the token starts on). The
end-of-text token that closes a document counts when the document ends inside a reply. Any other
document counts every token. Masks are uint8 (1 = counts) beside the token ids.
"""
from __future__ import annotations

import numpy as np

from hamner.data.chat_format import MARKERS, assistant_spans

CHAT_START = tuple(MARKERS.values())
IGNORE_INDEX = -100  # target id the cross-entropy skips


def is_chat(text: str) -> bool:
    """Whether a document is a conversation in the chat format (starts with a turn marker)."""
    return text.startswith(CHAT_START)


def tokens_and_masks(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint16-ready ids ending with end-of-text, uint8 mask) of each document."""
    out = []
    chat = [i for i, t in enumerate(texts) if is_chat(t)]
    offsets = dict(zip(chat, tokenizer.encode_with_offsets([texts[i] for i in chat]))) if chat else {}
    plain = [i for i in range(len(texts)) if i not in offsets]
    plain_ids = dict(zip(plain, tokenizer.encode_batch([texts[i] for i in plain]))) if plain else {}
    for i, text in enumerate(texts):
        if i in offsets:
            ids, starts = offsets[i]
            mask = reply_mask(text, np.asarray(starts, dtype=np.int64))
        else:
            ids = plain_ids[i]
            mask = np.ones(len(ids) + 1, dtype=np.uint8)
        out.append((np.asarray(ids + [tokenizer.eos_id], dtype=np.int64), mask))
    return out


def reply_mask(text: str, starts: np.ndarray) -> np.ndarray:
    """uint8 mask of len(starts) + 1 tokens (the last is end-of-text) of a chat-format text."""
    at = np.append(starts, len(text))  # the end-of-text token sits at the end of the text
    mask = np.zeros(at.size, dtype=np.uint8)
    for start, end in assistant_spans(text):
        mask[(at >= start) & (at < end)] = 1
        if end == len(text):
            mask[-1] = 1
    return mask


def targets_from_mask(tokens: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Next-token targets of rows of T + 1 tokens: tokens[:, 1:], IGNORE_INDEX where the mask leaves a token out."""
    targets = np.array(tokens[:, 1:], dtype=np.int64)
    if mask is not None:
        targets[mask[:, 1:] == 0] = IGNORE_INDEX
    return targets
