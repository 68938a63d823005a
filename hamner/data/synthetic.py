"""Synthetic reasoning tasks (arithmetic, counting, brackets, ...) at difficulty 1-5, as a row source.

The numba generator (data/synthetic_kernels.py) writes each sample as ids of text *pieces*: fixed
fragments ("Calculate:", " ->", digits, ...) and words with their leading space. Each piece is
tokenized once when a source is built, so the token stream is the concatenation of the pieces'
tokens, millions of tokens per second on one core. That equals tokenizing the text only if the
tokenizer never merges across a piece boundary; pieces are cut where byte-level BPE pre-tokenizers
cut (letters | punctuation | space+word, each digit alone), and the source checks this on a sample
of every task and difficulty when it is built, refusing a tokenizer that disagrees.
Texts for inspection and evaluation (`sample_texts`) come from the same generator.

Tasks and difficulty (d = 1..5), one line per sample:
  arithmetic      Calculate: 34 + 17 = 51. d1-2 operands 1..10d with + -; d3 1..100 with *; d4 10..500;
                  d5 three terms 10..500 with + -. Results may be negative (Calculate: 6 - 9 = -3).
  counting        Count the items: forest, rice, coin. Answer: 3 (2..2+2d words); from d3 also
                  Count 'queen' in: grass, queen. Answer: 1 (the answer may be 0).
  brackets        Brackets: { [ ( stone ) ] } Valid: yes. min(d, 4) bracket kinds, depth <= d+1, half
                  the samples have one bracket replaced by another (always invalid).
  listops         [MAX 8 8 [MIN 9 6] 7] = 8 with MAX, MIN, SUM of digits; nesting 0 (d1-2), 1 (d3-4), 2 (d5).
  sorting         Sort: 9 4 8 -> 4 8 9; 3..3+d values in 0..10d; from d4 also Sort descending.
  repeat          Repeat 3 times: hello -> hello hello hello (2..2+d times); from d3 also phrases of
                  2..d-1 words joined by " | ".
  context_recall  Xander drinks coffee. Carol reads novels. What does Carol do? Carol reads novels.
                  2..2+2d facts; from d3 also "Who reads novels? Carol." and "What does Carol read? novels."
  logic           If it rains then the ground is wet. It rains. Therefore the ground is wet.
                  d2 adds an unrelated fact, d3 two rules, d4 a chain of two, d5 a chain and a distractor rule.
  comparison      Which is bigger: 13 or 46? 46 (d1 up to 20, d2 100); d3 bigger or smaller up to 500;
                  d4 Find the largest/smallest: 665, 366, 398. Answer: 665; d5 sums and products
                  (Which is bigger: 39+42 or 7*10? 39+42, or "equal").
"""
from __future__ import annotations

import math

import numpy as np

from hamner.data import synthetic_kernels as K
from hamner.data import synthetic_words as W
from hamner.errors import DataError

TASKS: tuple[str, ...] = (
    "arithmetic", "counting", "brackets", "listops", "sorting", "repeat", "context_recall", "logic", "comparison",
)
assert len(TASKS) == K.N_TASKS


def _inventory() -> tuple[list[str], np.ndarray, np.ndarray]:
    """All pieces (fixed ones first, then " word", "word" pairs per category) and the category table."""
    categories = {
        "noun": W.NOUNS,
        "name": W.NAMES,
        "act_v3": [a[0] for a in W.ACTIVITIES],
        "act_base": [a[1] for a in W.ACTIVITIES],
        "act_obj": [a[2] for a in W.ACTIVITIES],
        "prop": W.PROPOSITIONS,
        "prop_cap": [p[0].upper() + p[1:] for p in W.PROPOSITIONS],
    }
    pieces = list(K.FIXED)
    lex: list[int] = []
    cat_off = [0]
    for name in K.CATEGORIES:
        for word in categories[name]:
            lex.append(len(pieces))
            pieces += [" " + word, word]  # the kernel finds "word" at the id of " word" + 1
        cat_off.append(len(lex))
    return pieces, np.array(lex, np.int32), np.array(cat_off, np.int64)


PIECES, _LEX, _CAT_OFF = _inventory()
# The marker after which each task's answer starts (by the sample's first piece text).
_ANSWER_AFTER = (
    ("Calculate:", "="), ("Count", " Answer:"), ("Brackets:", " Valid:"), ("[", "="), ("Sort", " ->"),
    ("Repeat", " ->"), ("If", " Therefore"), ("Which is", "?"), ("Find the", " Answer:"),
)


def _seed64(seed: int) -> np.uint64:
    return np.uint64(int(seed) % (1 << 64))


def _task_id(task: str | None) -> int:
    if task is None:
        return -1
    if task not in TASKS:
        raise DataError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS.index(task)


def _check_difficulty(difficulty: float) -> float:
    d = float(difficulty)
    if not 1.0 <= d <= 5.0 or math.isnan(d):
        raise DataError(f"synthetic difficulty must be in [1, 5], got {difficulty}")
    return d


def sample_texts(task: str | None, difficulty: float, n: int, seed: int) -> list[str]:
    """Texts (without end-of-text) of n samples of one task; task=None gives the mixed stream that
    `SyntheticSource.rows` tokenizes, sample for sample."""
    flat, offsets = K.sample_pieces(_seed64(seed), int(n), _task_id(task), _check_difficulty(difficulty), _LEX,
                                    _CAT_OFF)
    words = [PIECES[p] for p in flat.tolist()]
    return ["".join(words[a:b]) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def split_answer(text: str) -> tuple[str, str]:
    """(prompt, answer) of a sample: the answer starts with a space right after the task's marker, so
    greedy generation after the prompt, stopped at end-of-text, should give exactly the answer."""
    marker = "?"  # context recall: "... What does Carol do? Carol reads novels."
    for prefix, m in _ANSWER_AFTER:
        if text.startswith(prefix):
            marker = m
            break
    cut = text.rfind(marker)
    if cut < 0:
        raise DataError(f"not a synthetic sample: {text!r}")
    cut += len(marker)
    return text[:cut], text[cut:]


class SyntheticSource:
    """Row source of the nine tasks mixed uniformly, or of one task; a fractional difficulty d gives
    each sample floor(d) or floor(d)+1 (with probability frac(d)), so curriculum ramps are smooth.

    Its source name is "synthetic", or "synthetic/<task>" for one task, so a curriculum can weight
    a task on its own (the demo leans on arithmetic, say) beside the mixed stream.
    """

    def __init__(self, tokenizer, task: str | None = None) -> None:
        self.task_id = _task_id(task)
        self.name = "synthetic" if task is None else f"synthetic/{task}"
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_id)
        encoded = tokenizer.encode_batch(PIECES)
        self._tok_off = np.zeros(len(PIECES) + 1, np.int64)
        self._tok_off[1:] = np.cumsum([len(ids) for ids in encoded])
        self._tok_flat = np.array([i for ids in encoded for i in ids], np.int32)
        self._check_tokenizer()

    def rows(self, n_rows: int, row_len: int, seed: int, difficulty: float) -> np.ndarray:
        """[n_rows, row_len] int32: samples 0, 1, ... of the seeded stream (the `sample_texts` of this
        source's task, or of task=None), each followed by end-of-text,
        packed back to back (a sample may continue into the next row)."""
        if n_rows < 0 or row_len < 1:
            raise ValueError(f"rows needs n_rows >= 0 and row_len >= 1, got {n_rows} x {row_len}")
        out = np.empty(n_rows * row_len, np.int32)
        K.token_stream(out, _seed64(seed), self.task_id, _check_difficulty(difficulty), _LEX, _CAT_OFF,
                       self._tok_flat, self._tok_off, np.int64(self.eos_id))
        return out.reshape(n_rows, row_len)

    def _check_tokenizer(self) -> None:
        """Refuse a tokenizer whose tokens of whole texts differ from the concatenated piece tokens."""
        for d in (1.0, 2.0, 3.0, 4.0, 5.0):
            texts = sample_texts(TASKS[self.task_id] if self.task_id >= 0 else None, d, 90, seed=12345)
            expected = [i for ids in self.tokenizer.encode_batch(texts) for i in ids + [self.eos_id]]
            got = self.rows(1, len(expected), 12345, d)[0]
            if got.tolist() != expected:
                raise DataError(
                    f"tokenizer {self.tokenizer.name} tokenizes synthetic texts differently from their pieces "
                    "(it merges tokens across word or digit boundaries, or adds tokens), so the synthetic "
                    "generator cannot use it; use a byte-level BPE tokenizer that splits digits (such as cosmo2) "
                    "or 'bytes'"
                )
