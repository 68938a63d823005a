"""The synthetic-task generator: answers checked by independent solvers, formats and difficulty rules,
token ids identical to tokenizing the text (cosmo2 and bytes), determinism from (seed, position)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from hamner.data.row_source import RowSource
from hamner.data.synthetic import TASKS, SyntheticSource, sample_texts, split_answer
from hamner.data.tokenizer import ByteTokenizer, load_tokenizer
from hamner.errors import DataError

N_PER_TASK = 2000  # samples per task and difficulty for the solvers


@pytest.fixture
def cosmo2(shared_data):
    return load_tokenizer(str(shared_data / "cosmo2_tokenizer.json"))


# ---------------------------------------------------------------- independent solvers (plain Python)
# Each takes the prompt (the text up to the answer) and the integer difficulty, checks the task's
# format and difficulty rules, and returns the answer text the sample must continue with.

def _arithmetic(p: str, d: int) -> str:
    m = re.fullmatch(r"Calculate: (\d+) ([-+*]) (\d+)(?: ([-+*]) (\d+))? =", p)
    assert m, p
    nums = [int(x) for x in m.group(1, 3, 5) if x is not None]
    ops = [o for o in m.group(2, 4) if o is not None]
    lo, hi, allowed, terms = {1: (1, 10, "+-", 2), 2: (1, 20, "+-", 2), 3: (1, 100, "+-*", 2),
                              4: (10, 500, "+-*", 2), 5: (10, 500, "+-", 3)}[d]
    assert len(nums) == terms and all(lo <= x <= hi for x in nums) and set(ops) <= set(allowed), p
    total = nums[0]
    for op, x in zip(ops, nums[1:]):
        total = total + x if op == "+" else total - x if op == "-" else total * x
    return f" {total}"


def _counting(p: str, d: int) -> str:
    m = re.fullmatch(r"Count the items: ([a-z, ]+)\. Answer:", p)
    if m:
        items = m.group(1).split(", ")
        answer = len(items)
    else:
        m = re.fullmatch(r"Count '([a-z]+)' in: ([a-z, ]+)\. Answer:", p)
        assert m and d >= 3, p
        items = m.group(2).split(", ")
        answer = items.count(m.group(1))
    assert 2 <= len(items) <= 2 + 2 * d and all(re.fullmatch("[a-z]+", w) for w in items), p
    return f" {answer}"


_PAIRS = {")": "(", "]": "[", "}": "{", ">": "<"}


def _brackets(p: str, d: int) -> str:
    m = re.fullmatch(r"Brackets: (.+) Valid:", p)
    assert m, p
    symbols = [s for s in m.group(1).split(" ") if not s.isalpha()]
    assert set(symbols) <= set("()[]{}<>"), p
    kinds = {_PAIRS.get(s, s) for s in symbols}
    assert len(kinds) <= min(d, 4), p
    stack: list[str] = []
    deepest = 0
    for s in symbols:
        if s in _PAIRS.values():
            stack.append(s)
            deepest = max(deepest, len(stack))
        elif not stack or stack.pop() != _PAIRS[s]:
            return " no"
    if stack:
        return " no"
    assert deepest <= d + 1 and len(symbols) <= 2 * (d + 2), p
    return " yes"


def _listops(p: str, d: int) -> str:
    assert p.endswith(" =") and p.startswith("["), p
    tokens = re.findall(r"\[(?:MAX|MIN|SUM)|\]|\d| ", p[:-2])
    assert "".join(tokens) == p[:-2], p
    tokens = [t for t in tokens if t != " "]
    pos = 0
    deepest = 0

    def parse(depth: int) -> int:
        nonlocal pos, deepest
        deepest = max(deepest, depth)
        op = tokens[pos][1:]
        pos += 1
        args = []
        while tokens[pos] != "]":
            if tokens[pos].startswith("["):
                args.append(parse(depth + 1))
            else:
                args.append(int(tokens[pos]))
                pos += 1
        pos += 1
        assert len(args) >= 2, p
        return max(args) if op == "MAX" else min(args) if op == "MIN" else sum(args)

    value = parse(0)
    assert pos == len(tokens), p
    assert deepest == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2}[d], p
    return f" {value}"


def _sorting(p: str, d: int) -> str:
    m = re.fullmatch(r"Sort( descending)?:((?: \d+)+) ->", p)
    assert m and (m.group(1) is None or d >= 4), p
    vals = [int(x) for x in m.group(2).split()]
    assert 3 <= len(vals) <= 3 + d and all(0 <= v <= 10 * d for v in vals), p
    return " " + " ".join(map(str, sorted(vals, reverse=m.group(1) is not None)))


def _repeat(p: str, d: int) -> str:
    m = re.fullmatch(r"Repeat (\d+) times: ([a-z ]+) ->", p)
    assert m, p
    times, words = int(m.group(1)), m.group(2).split(" ")
    assert 2 <= times <= 2 + d and (len(words) == 1 or 3 <= d and len(words) <= d - 1), p
    sep = " | " if len(words) > 1 else " "
    return " " + sep.join([" ".join(words)] * times)


def _context_recall(p: str, d: int) -> str:
    question = r"(What does ([A-Z][a-z]+) ([a-z]+)\?|Who ([a-z]+) ([a-z]+)\?)"
    m = re.fullmatch(r"((?:[A-Z][a-z]+ [a-z]+ [a-z]+\. )+)" + question, p)
    assert m, p
    facts = [f.split(" ") for f in m.group(1).split(". ") if f]
    names = [f[0] for f in facts]
    assert 2 <= len(facts) <= 2 + 2 * d and len(set(names)) == len(names), p
    if m.group(3) and m.group(4) == "do":
        (fact,) = [f for f in facts if f[0] == m.group(3)]
        return " " + " ".join(fact) + "."
    assert d >= 3, p
    if m.group(3):
        verb = m.group(4)
        (fact,) = [f for f in facts if f[0] == m.group(3) and f[1] in (verb + "s", verb + "es")]
        return f" {fact[2]}."
    (fact,) = [f for f in facts if f[1:] == [m.group(5), m.group(6)]]
    return f" {fact[0]}."


def _logic(p: str, d: int) -> str:
    assert p.endswith(" Therefore"), p
    sentences = p[: -len(" Therefore")].split(". ")
    assert sentences[-1].endswith(".")
    sentences[-1] = sentences[-1][:-1]
    rules, facts = [], set()
    for s in sentences:
        m = re.fullmatch(r"If ([a-z ]+) then ([a-z ]+)", s)
        if m:
            rules.append(m.group(1, 2))
        else:
            assert re.fullmatch(r"[A-Z][a-z ]+", s), p
            facts.add(s[0].lower() + s[1:])
    assert len(rules) == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3}[d] and len(facts) == (2 if d == 2 else 1), p
    known = set(facts)
    while True:
        new = {b for a, b in rules if a in known} - known
        if not new:
            break
        known |= new
    premises = {a for a, _ in rules}
    (end,) = [q for q in known - facts if q not in premises]
    return f" {end}."


def _value(expr: str) -> int:
    a, op, b = re.fullmatch(r"(\d+)([+*])(\d+)", expr).groups()
    return int(a) + int(b) if op == "+" else int(a) * int(b)


def _comparison(p: str, d: int) -> str:
    m = re.fullmatch(r"Find the (largest|smallest): (\d+(?:, \d+)+)\. Answer:", p)
    if m:
        assert d == 4, p
        vals = [int(x) for x in m.group(2).split(", ")]
        assert 3 <= len(vals) <= 5 and all(1 <= v <= 999 for v in vals), p
        return f" {max(vals) if m.group(1) == 'largest' else min(vals)}"
    m = re.fullmatch(r"Which is (bigger|smaller): (\S+) or (\S+)\?", p)
    assert m and (m.group(1) == "bigger" or d in (3, 5)) and d != 4, p
    left, right = m.group(2, 3)
    if d == 5:
        a, b = _value(left), _value(right)
        if a == b:
            return " equal"
        return " " + (left if (a > b) == (m.group(1) == "bigger") else right)
    a, b = int(left), int(right)
    assert a != b and max(a, b) <= {1: 20, 2: 100, 3: 500}[d], p
    return f" {max(a, b) if m.group(1) == 'bigger' else min(a, b)}"


SOLVERS = {"arithmetic": _arithmetic, "counting": _counting, "brackets": _brackets, "listops": _listops,
           "sorting": _sorting, "repeat": _repeat, "context_recall": _context_recall, "logic": _logic,
           "comparison": _comparison}


# ---------------------------------------------------------------- tests

def test_tasks_are_the_nine_of_the_issue():
    assert set(TASKS) == set(SOLVERS) and len(TASKS) == 9


@pytest.mark.parametrize("task", TASKS)
def test_every_answer_is_correct_and_formats_follow_the_difficulty_rules(task):
    solve = SOLVERS[task]
    for d in range(1, 6):
        texts = sample_texts(task, d, N_PER_TASK, seed=100 + d)
        assert len(set(texts)) >= 150, (task, d)  # variety (d1 arithmetic has exactly 200 possible samples)
        for text in texts:
            prompt, answer = split_answer(text)
            assert prompt + answer == text and answer.startswith(" ") and "\n" not in text
            assert answer == solve(prompt, d), text


def _seen(task: str, d: int, pattern: str) -> bool:
    return any(re.search(pattern, t) for t in sample_texts(task, d, 500, seed=7))


def test_harder_forms_appear_from_their_difficulty():
    assert _seen("arithmetic", 1, r"= -\d") and _seen("arithmetic", 3, r"\*") and not _seen("arithmetic", 2, r"\*")
    assert _seen("counting", 3, "Count '") and not _seen("counting", 2, "Count '")
    assert _seen("counting", 3, r"Count '.*Answer: 0$")
    assert _seen("brackets", 2, "yes$") and _seen("brackets", 2, "no$")
    assert _seen("brackets", 4, "<") and not _seen("brackets", 3, "<")
    assert _seen("sorting", 4, "descending") and not _seen("sorting", 3, "descending")
    assert _seen("repeat", 3, r" \| ") and not _seen("repeat", 2, r" \| ")
    assert _seen("context_recall", 3, r"\? [a-z]+\.$") and _seen("context_recall", 3, r"Who ")
    assert not _seen("context_recall", 2, r"Who ")
    assert _seen("comparison", 3, "smaller") and _seen("comparison", 4, "Find the smallest")
    assert _seen("comparison", 5, r"\? equal$") and _seen("comparison", 5, r"\*\d+\? \d+\*")


def _stream_ids(tok, texts: list[str]) -> list[int]:
    return [i for ids in tok.encode_batch(texts) for i in ids + [tok.eos_id]]


@pytest.mark.parametrize("spec", ["bytes", "cosmo2"])
def test_token_stream_equals_tokenizing_the_texts(spec, cosmo2):
    """rows() of the mixed stream == encode(text) + eos of the same samples, ~2000 per task and difficulty."""
    tok = ByteTokenizer() if spec == "bytes" else cosmo2
    source = SyntheticSource(tok)
    for d in (1.0, 2.0, 3.0, 4.0, 5.0, 2.5):
        n = 9 * (2000 if d == int(d) else 300)
        texts = sample_texts(None, d, n, seed=int(10 * d))
        firsts = {t.split(" ")[0] for t in texts}
        assert firsts >= {"Calculate:", "Brackets:", "Sort:", "Repeat", "If"} and firsts & {"Which", "Find"}
        expected = _stream_ids(tok, texts)
        cut = len(expected) - 7  # rows end mid-sample
        got = source.rows(1, cut, int(10 * d), d)
        assert got.dtype == np.int32 and got.shape == (1, cut)
        assert got[0].tolist() == expected[:cut], d


@pytest.mark.parametrize("task", ["arithmetic", "sorting"])
def test_one_task_source_streams_exactly_that_tasks_samples(task, cosmo2):
    """SyntheticSource(tok, task) is the stream of sample_texts(task, ...), named synthetic/<task>."""
    source = SyntheticSource(cosmo2, task=task)
    assert source.name == f"synthetic/{task}"
    texts = sample_texts(task, 2.5, 500, seed=11)
    expected = _stream_ids(cosmo2, texts)
    assert source.rows(1, len(expected), 11, 2.5)[0].tolist() == expected
    assert SyntheticSource(cosmo2).rows(1, 200, 11, 2.5).tolist() != source.rows(1, 200, 11, 2.5).tolist()


def test_unknown_task_source_is_refused():
    with pytest.raises(DataError, match="unknown synthetic task 'poetry'"):
        SyntheticSource(ByteTokenizer(), task="poetry")


def test_answer_split_is_token_aligned(cosmo2):
    for task in TASKS:
        for d in (1, 3, 5):
            for text in sample_texts(task, d, 100, seed=3):
                prompt, answer = split_answer(text)
                assert cosmo2.encode(prompt) + cosmo2.encode(answer) == cosmo2.encode(text), text


def test_rows_are_deterministic_from_seed_and_position():
    source = SyntheticSource(ByteTokenizer())
    assert isinstance(source, RowSource) and source.name == "synthetic"
    a = source.rows(4, 257, seed=5, difficulty=3.0)
    assert np.array_equal(a, source.rows(4, 257, seed=5, difficulty=3.0))
    assert np.array_equal(a.ravel()[:600], source.rows(3, 200, seed=5, difficulty=3.0).ravel())
    assert not np.array_equal(a, source.rows(4, 257, seed=6, difficulty=3.0))
    assert sample_texts(None, 3, 50, seed=5) == sample_texts(None, 3, 200, seed=5)[:50]
    assert sample_texts("logic", 2, 30, seed=-1) == sample_texts("logic", 2, 30, seed=2**64 - 1)
    assert source.rows(0, 8, 1, 1.0).shape == (0, 8)


def test_fractional_difficulty_mixes_neighbouring_levels():
    """listops is flat at d2 and nested at d3, so the share of nested samples at d = 2.3 is about 0.3."""
    def nested(d: float) -> float:
        return np.mean([t.count("[") > 1 for t in sample_texts("listops", d, 3000, seed=11)])

    assert nested(2.0) == 0.0 and nested(3.0) == 1.0
    assert abs(nested(2.3) - 0.3) < 0.04


def test_bad_arguments_are_refused():
    with pytest.raises(DataError, match="unknown synthetic task"):
        sample_texts("poetry", 1, 1, 0)
    for d in (0.5, 5.5, float("nan")):
        with pytest.raises(DataError, match="difficulty must be in"):
            sample_texts("logic", d, 1, 0)
        with pytest.raises(DataError, match="difficulty must be in"):
            SyntheticSource(ByteTokenizer()).rows(1, 8, 0, d)
    with pytest.raises(DataError, match="not a synthetic sample"):
        split_answer("hello world")


class _DigitMergingTokenizer(ByteTokenizer):
    """Bytes, except that two adjacent digits become one token, as tokenizers without digit splitting do."""

    name = "digit-merging"

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in re.sub(r"\d\d", "\x01", text)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def test_tokenizer_that_merges_across_pieces_is_refused():
    with pytest.raises(DataError, match="tokenizes synthetic texts differently"):
        SyntheticSource(_DigitMergingTokenizer())
