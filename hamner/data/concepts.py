"""A built-in concept set: seven kinds of one-line questions with disjoint trained and held-out items.

Kinds: yes/no size questions, number comparisons, opposites, Q&A facts, number words, addition
and chat replies. Each kind's items are enumerated from fixed tables (data.chat_gen's), shuffled
with a fixed seed and cut into trained items (taught by the `concepts` training sources) and
held-out items (never trained on), so a probe of both measures memorisation and generalisation
apart. A training sample is one chat exchange, user question then assistant answer, in the chat
format; the probe asks the same question and expects the same answer.

Sources: "concepts" (all kinds) and "concepts/<kind>" (one kind), trained items only.
"""
from __future__ import annotations

import random
from functools import cache
from typing import NamedTuple

from hamner.data.chat_format import format_conversation, prompt_for_reply
from hamner.data.chat_gen import BY_SIZE, COLORS, GREETINGS, LEGS, OPPOSITES, SOUNDS, THANKS, number_words
from hamner.data.generated_text import GeneratedTextSource
from hamner.errors import DataError

PREFIX = "concepts"
ITEMS_PER_KIND = 40  # at most; a quarter of them held out
HELD_OUT_SHARE = 0.25
_SEED = 20240601


class ConceptItem(NamedTuple):
    kind: str
    question: str
    answer: str
    trained: bool


def _yes_no() -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(BY_SIZE):
        for j, b in enumerate(BY_SIZE):
            if abs(i - j) >= 3:
                out.append((f"Is {a} bigger than {b}?", "Yes." if i > j else "No."))
    return out


def _comparison() -> list[tuple[str, str]]:
    return [(f"Which is bigger, {a} or {b}?", f"{max(a, b)}.") for a in range(1, 30) for b in range(1, 30) if a != b]


def _opposites() -> list[tuple[str, str]]:
    return [(f"What is the opposite of {a}?", f"{b}.") for x, y in OPPOSITES for a, b in ((x, y), (y, x))]


def _facts() -> list[tuple[str, str]]:
    facts = [(f"What color is {thing}?", f"{color}.") for thing, color in COLORS]
    facts += [(f"What sound does {animal} make?", f"It {sound}.") for animal, sound in SOUNDS]
    facts += [(f"How many legs does {one} have?", f"{number_words(legs)}.") for one, _, legs in LEGS]
    return facts


def _number_words() -> list[tuple[str, str]]:
    return [(f"Write {n} in words.", f"{number_words(n)}.") for n in range(100)]


def _addition() -> list[tuple[str, str]]:
    return [(f"What is {a} plus {b}?", f"{a + b}.") for a in range(10) for b in range(10)]


def _chat() -> list[tuple[str, str]]:
    return list(GREETINGS + THANKS)


KINDS = {
    "yes_no": _yes_no, "comparison": _comparison, "opposites": _opposites, "facts": _facts,
    "number_words": _number_words, "addition": _addition, "chat": _chat,
}


@cache
def concept_items(kind: str | None = None) -> tuple[ConceptItem, ...]:
    """Every item of one kind (or of all kinds, kind=None), trained ones first within a kind."""
    if kind is None:
        return tuple(item for k in KINDS for item in concept_items(k))
    if kind not in KINDS:
        raise DataError(f"unknown concept kind {kind!r}; expected one of {', '.join(KINDS)}")
    pairs = KINDS[kind]()
    random.Random(f"{_SEED}:{kind}").shuffle(pairs)
    pairs = pairs[:ITEMS_PER_KIND]
    held = max(1, round(len(pairs) * HELD_OUT_SHARE))
    cut = len(pairs) - held
    return tuple(ConceptItem(kind, q, a, i < cut) for i, (q, a) in enumerate(pairs))


def probe_prompt(question: str) -> str:
    """The chat prompt of a question: a user turn and an open assistant turn."""
    return prompt_for_reply([{"role": "user", "content": question}])


def parse_source_name(name: str) -> str | None:
    """The kind of a "concepts/<kind>" source (None for "concepts", all kinds); unknown kinds are refused."""
    if name == PREFIX:
        return None
    kind = name.removeprefix(PREFIX + "/")
    if kind not in KINDS:
        raise DataError(f"source {name!r}: unknown concept kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


class ConceptSource(GeneratedTextSource):
    """Row source of the trained concept items as one-exchange chats ("concepts" or "concepts/<kind>")."""

    def __init__(self, tokenizer, kind: str | None = None) -> None:
        self.name = PREFIX if kind is None else f"{PREFIX}/{kind}"
        trained = [item for item in concept_items(kind) if item.trained]

        def conversation(rng: random.Random) -> str:
            item = rng.choice(trained)
            return format_conversation([{"role": "user", "content": item.question},
                                        {"role": "assistant", "content": item.answer}])

        super().__init__(tokenizer, conversation)
