"""A built-in concept set: kinds of one-line questions with disjoint trained and held-out items.

The seven kinds of the `concepts` set: yes/no size questions, number comparisons, opposites, Q&A
facts, number words, addition and chat replies. Each kind's items are enumerated from fixed tables
(data.chat_gen's), shuffled with a fixed seed and cut into trained items (taught by the `concepts`
training sources) and held-out items (never trained on), so a probe of both measures memorisation
and generalisation apart. A training sample is one chat exchange, user question then assistant
answer, in the chat format; the probe asks the same question and expects the same answer.

Three experiment kinds, named one at a time and not part of `concepts`:
- "echo": "Say 347." -> "347." for 200 of the numbers 0-999, a quarter held out: copying unseen numbers.
- "composition": facts of the form "The R of X is Y." taught as plain statements, and the question
  form "What is the R of X?" -> "Y." taught for other relations (colour, plural, double, successor)
  only. Its probe has three kinds: "composition/statements" (does the model complete a statement),
  "composition/questions" (the question form of the other relations; held out: facts seen only as
  statements) and "composition": "What is the opposite of X?" for opposite pairs never asked that
  way, "trained" when the pair's statement was taught, "held_out" when the pair was never seen (a
  control that no model should pass). Nothing of kind "composition" itself is trained on.
- "capacity-N" (1 <= N <= 1024): N invented facts "What is the code of NAME?" -> "CODE." (a
  three-digit number), all trained: recall against N is how many facts a model holds. The facts of
  a smaller N are the first ones of a larger N.

Sources: "concepts" (the seven kinds) and "concepts/<kind>" (one kind), taught items only.
"""
from __future__ import annotations

import random
import re
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
ECHO_ITEMS = 200
COMPOSED = "composition"  # the probe-only kind of the composition experiment
CAPACITY = "capacity"
CAPACITY_MAX = 1024
_CAPACITY_KIND = re.compile(r"^capacity-(\d+)$")


class ConceptItem(NamedTuple):
    kind: str
    question: str
    answer: str
    trained: bool
    chat: bool = True  # a user question and an assistant answer; False: a plain statement whose end is the answer


def _yes_no() -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(BY_SIZE):
        for j, b in enumerate(BY_SIZE):
            if abs(i - j) >= 3:
                out.append((f"Is {a} bigger than {b}?", "Yes." if i > j else "No."))
    return out


def _comparison() -> list[tuple[str, str]]:
    return [(f"Which is bigger, {a} or {b}?", f"{max(a, b)}.") for a in range(1, 30) for b in range(1, 30) if a != b]


def _opposite_pairs() -> list[tuple[str, str]]:
    return [(a, b) for x, y in OPPOSITES for a, b in ((x, y), (y, x))]


def _opposites() -> list[tuple[str, str]]:
    return [(f"What is the opposite of {a}?", f"{b}.") for a, b in _opposite_pairs()]


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
EXPERIMENT_KINDS = ("echo", "composition", "capacity-N")


def _split(kind: str, pairs: list, limit: int) -> list[tuple[object, bool]]:
    """`pairs` shuffled with the kind's fixed seed, cut to `limit`, each with whether it is trained."""
    pairs = list(pairs)
    random.Random(f"{_SEED}:{kind}").shuffle(pairs)
    pairs = pairs[:limit]
    cut = len(pairs) - max(1, round(len(pairs) * HELD_OUT_SHARE))
    return [(pair, i < cut) for i, pair in enumerate(pairs)]


def _echo() -> tuple[ConceptItem, ...]:
    return tuple(ConceptItem("echo", f"Say {n}.", f"{n}.", trained) for n, trained in _split("echo", range(1000),
                                                                                             ECHO_ITEMS))


def _relation_facts() -> dict[str, list[tuple[str, str]]]:
    """The composition experiment's relations other than opposite: (x, y) with "the R of x is y"."""
    return {"color": [(thing, color) for thing, color in COLORS],
            "plural": [(one, many) for one, many, _ in LEGS],
            "double": [(str(n), str(2 * n)) for n in range(1, 26)],
            "successor": [(str(n), str(n + 1)) for n in range(25)]}


def _composition() -> tuple[ConceptItem, ...]:
    statements, questions, composed = [], [], []
    for (a, b), known in _split(COMPOSED, _opposite_pairs(), len(OPPOSITES) * 2):
        statements.append(ConceptItem(f"{COMPOSED}/statements", f"The opposite of {a} is", f"{b}.", known, False))
        composed.append(ConceptItem(COMPOSED, f"What is the opposite of {a}?", f"{b}.", known))
    for relation, facts in _relation_facts().items():
        for (x, y), asked in _split(f"{COMPOSED}:{relation}", facts, len(facts)):
            statements.append(ConceptItem(f"{COMPOSED}/statements", f"The {relation} of {x} is", f"{y}.", True, False))
            questions.append(ConceptItem(f"{COMPOSED}/questions", f"What is the {relation} of {x}?", f"{y}.", asked))
    return tuple(statements + questions + composed)


def _capacity(n: int) -> tuple[ConceptItem, ...]:
    """The first n of CAPACITY_MAX invented facts: a unique made-up name and a three-digit code each."""
    rng = random.Random(f"{_SEED}:{CAPACITY}")
    names: dict[str, None] = {}
    while len(names) < CAPACITY_MAX:
        names[rng.choice("BDFGKLMNPRSTVZ") + rng.choice("aeiou") + rng.choice("bdfgklmnprstvz")
              + rng.choice("aeiou") + rng.choice("bdfgklmnprstvz")] = None
    codes = [rng.randrange(100, 1000) for _ in range(CAPACITY_MAX)]
    return tuple(ConceptItem(f"{CAPACITY}-{n}", f"What is the code of {name}?", f"{code}.", True)
                 for name, code in list(zip(names, codes))[:n])


@cache
def concept_items(kind: str | None = None) -> tuple[ConceptItem, ...]:
    """Every probe item of one kind (or of the seven `concepts` kinds, kind=None), trained ones first within a kind."""
    if kind is None:
        return tuple(item for k in KINDS for item in concept_items(k))
    if kind == "echo":
        return _echo()
    if kind == COMPOSED:
        return _composition()
    match = _CAPACITY_KIND.match(kind)
    if match:
        if not 1 <= int(match[1]) <= CAPACITY_MAX:
            raise DataError(f"concept kind {kind!r}: the number of facts must be 1 to {CAPACITY_MAX}")
        return _capacity(int(match[1]))
    if kind not in KINDS:
        raise DataError(f"unknown concept kind {kind!r}; expected one of {', '.join((*KINDS, *EXPERIMENT_KINDS))}")
    return tuple(ConceptItem(kind, q, a, trained) for (q, a), trained in _split(kind, KINDS[kind](), ITEMS_PER_KIND))


def taught_items(kind: str | None = None) -> tuple[ConceptItem, ...]:
    """The items the training source of `kind` teaches: the trained ones, less the composed questions."""
    return tuple(item for item in concept_items(kind) if item.trained and item.kind != COMPOSED)


def probe_prompt(item: ConceptItem) -> str:
    """What the model is given: a question's chat prompt (a user turn and an open assistant turn),
    or a statement's text before its answer."""
    if not item.chat:
        return item.question
    return prompt_for_reply([{"role": "user", "content": item.question}])


def training_text(item: ConceptItem) -> str:
    """One training document: the exchange of a question, or the whole statement."""
    if not item.chat:
        return f"{item.question} {item.answer}"
    return format_conversation([{"role": "user", "content": item.question},
                                {"role": "assistant", "content": item.answer}])


def parse_source_name(name: str) -> str | None:
    """The kind of a "concepts/<kind>" source (None for "concepts", the seven kinds); unknown kinds are refused."""
    if name == PREFIX:
        return None
    kind = name.removeprefix(PREFIX + "/")
    try:
        concept_items(kind)
    except DataError as e:
        raise DataError(f"source {name!r}: {e}") from None
    return kind


class ConceptSource(GeneratedTextSource):
    """Row source of the taught concept items, each sample one of them ("concepts" or "concepts/<kind>")."""

    def __init__(self, tokenizer, kind: str | None = None) -> None:
        self.name = PREFIX if kind is None else f"{PREFIX}/{kind}"
        taught = taught_items(kind)

        def document(rng: random.Random) -> str:
            return training_text(rng.choice(taught))

        super().__init__(tokenizer, document)
