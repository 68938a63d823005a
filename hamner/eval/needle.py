"""Needle in a haystack: can the model find one fact planted in a long stretch of filler text?

The haystack is sentences of procedural stories (`data.stories`); the needle, "The secret
number is 4821." (a fresh 4-digit number per trial), is inserted between sentences at a depth
from 0 (start) to 1 (end), and the prompt ends with the question " What is the secret number?",
in the style of the synthetic context-recall task. The greedy continuation counts as a hit when
it contains the number (as a whole number). Recall is reported per prompt length and depth.
"""
from __future__ import annotations

import random
import re

from hamner.data.tokenizer import Tokenizer
from hamner.errors import EvalError
from hamner.model.transformer import HamnerModel
from hamner.use.generate import generate

NEEDLE = "The secret number is {number}."
QUESTION = " What is the secret number?"
DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def answer_room(tokenizer: Tokenizer) -> int:
    """Tokens generated per needle: enough to restate the needle sentence, plus two."""
    return len(tokenizer.encode(" " + NEEDLE.format(number=88888))) + 2


def default_lengths(context: int, tokenizer: Tokenizer) -> tuple[int, ...]:
    """Prompt lengths (tokens) to test: a quarter, half and all of the context left after the answer
    (those of at least 16 tokens; none for a context too short to hold a haystack)."""
    room = context - answer_room(tokenizer)
    return tuple(sorted({n for n in (room // 4, room // 2, room) if n >= 16}))


def _story_sentences(rng: random.Random) -> list[str]:
    from hamner.data.stories import generate_story

    text = generate_story(rng)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def haystack_prompt(tokenizer: Tokenizer, length: int, depth: float, number: int, rng: random.Random) -> str:
    """Filler sentences totalling about `length` tokens with the needle at `depth`, then the question."""
    needle = NEEDLE.format(number=number)
    budget = length - len(tokenizer.encode(" " + needle)) - len(tokenizer.encode(QUESTION))
    sentences: list[str] = []
    used, misses = 0, 0
    while misses < 20:  # stop once 20 sentences in a row no longer fit in what is left
        for sentence in _story_sentences(rng):
            cost = len(tokenizer.encode(" " + sentence))
            if used + cost > budget:
                misses += 1
                continue
            sentences.append(sentence)
            used, misses = used + cost, 0
    sentences.insert(round(depth * len(sentences)), needle)
    return " ".join(sentences) + QUESTION


def needle_recall(model: HamnerModel, tokenizer: Tokenizer, *, lengths: tuple[int, ...] | None = None,
                  depths: tuple[float, ...] = DEPTHS, trials: int = 4, seed: int = 1234) -> list[dict[str, float]]:
    """Recall per (length, depth) over `trials` needles: rows of length, depth, recall, prompt_tokens.

    Lengths default to `default_lengths` of the model's context (no rows when it is too short);
    longer ones are refused (the model would never see the start of the haystack).
    """
    context = model.config.max_seq_len
    lengths = default_lengths(context, tokenizer) if lengths is None else lengths
    if not lengths:
        return []
    room = answer_room(tokenizer)
    if max(lengths) + room > context:
        raise EvalError(f"needle prompt length {max(lengths)} plus {room} answer tokens exceeds "
                         f"the model's context of {context}")
    rows = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            hits, prompt_tokens = 0, 0
            for _ in range(trials):
                number = rng.randint(1000, 9999)
                # Led by end-of-text, as every training document is; `length` counts that token too.
                text = haystack_prompt(tokenizer, length - 1, depth, number, rng)
                ids = [tokenizer.eos_id] + tokenizer.encode(text)
                out = generate(model, ids, room, temperature=0.0, eos_id=tokenizer.eos_id)[0]
                hits += re.search(rf"(?<!\d){number}(?!\d)", tokenizer.decode(out)) is not None
                prompt_tokens += len(ids)
            rows.append({"length": length, "depth": depth, "recall": hits / trials,
                         "prompt_tokens": prompt_tokens / trials, "trials": trials})
    return rows
