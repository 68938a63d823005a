"""The built-in story and chat generators: deterministic, varied, well formed, correct answers, packed rows."""
from __future__ import annotations

import re

import numpy as np
import pytest

from hamner.data.chat_format import format_conversation
from hamner.data.chat_gen import OPPOSITES, ChatSource, generate_conversation, number_words
from hamner.data.generated_text import sample_rng
from hamner.data.row_source import RowSource
from hamner.data.stories import StorySource, generate_story
from hamner.data.tokenizer import ByteTokenizer, load_tokenizer

N = 1500


def test_stories_are_deterministic_varied_and_well_formed():
    stories = [generate_story(sample_rng(1, i)) for i in range(N)]
    assert stories[:20] == [generate_story(sample_rng(1, i)) for i in range(20)]
    assert len(set(stories)) > 0.99 * N
    assert len({w for s in stories for w in re.findall(r"[a-z]+", s.lower())}) > 400
    assert len({s.split(". ")[1] for s in stories}) > 200  # the plots' first sentences vary
    for s in stories:
        assert 200 < len(s) < 1200 and s.endswith((".", "!", '"')) and not re.search(r"[{}_<>]", s), s
        for sentence in re.split(r"(?<=[.!?]) (?=[^a-z])", s):
            assert re.match(r'["A-Z]', sentence), (sentence, s)
        hero = re.match(r"[A-Z][a-z ]+, there was a ([a-z ]+) named ([A-Z][a-z]+)\.", s)
        assert hero and s.count(hero.group(2)) >= 3, s
        if hero.group(1) == "little girl":
            assert not re.search(r"\b(he|his|him|He|His)\b", s), s
        if hero.group(1) == "little boy":
            assert not re.search(r"\b(she|her|She|Her)\b", s), s


_WORD_VALUES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_VALUES.update({w: 10 * i for i, w in enumerate(_TENS, 2)})


def _parse_words(words: str) -> int:
    """Independent reading of English number words (the inverse of what the generator writes)."""
    total, part = 0, 0
    for w in re.split(r"[ -]", words.lower()):
        if w == "thousand":
            total, part = total + part * 1000, 0
        elif w == "hundred":
            part *= 100
        else:
            part += _WORD_VALUES[w]
    return total + part


def test_number_words():
    assert number_words(0) == "zero" and number_words(42) == "forty-two" and number_words(305) == "three hundred five"
    assert number_words(7010) == "seven thousand ten" and number_words(1900) == "one thousand nine hundred"
    assert all(_parse_words(number_words(n)) == n for n in range(10000))
    with pytest.raises(ValueError):
        number_words(10000)


def _check_answer(q: str, a: str) -> bool:
    """Re-derive the answer of the question kinds whose truth is computable; True if the kind was recognised."""
    if m := re.fullmatch(r"(?:How do you write|Spell out the number) (\d+)(?: in words)?[?.]", q):
        assert a == f"{m.group(1)} in words is {number_words(int(m.group(1)))}."
        assert _parse_words(a[:-1].split(" is ")[1]) == int(m.group(1))
    elif m := re.fullmatch(r"What number is ([a-z -]+)\?", q):
        assert a.endswith(f" is {_parse_words(m.group(1))}.")
    elif m := re.fullmatch(r"(?:What is|Can you tell me what) (\d+) (plus|minus|times) (\d+)(?: is)?\?", q):
        x, y = int(m.group(1)), int(m.group(3))
        value = {"plus": x + y, "minus": x - y, "times": x * y}[m.group(2)]
        assert value >= 0 and a == f"{x} {m.group(2)} {y} is {value}."
    elif m := re.fullmatch(r"Is (\d+) (bigger|smaller) than (\d+)\?", q):
        x, y = int(m.group(1)), int(m.group(3))
        assert a.startswith("Yes" if (x > y) == (m.group(2) == "bigger") else "No")
        assert a.endswith(f"{x} is {'bigger' if x > y else 'smaller'} than {y}.")
    elif m := re.fullmatch(r"Which is bigger, (\d+) or (\d+)\?", q):
        assert a.startswith(f"{max(int(m.group(1)), int(m.group(2)))} is bigger")
    elif m := re.fullmatch(r"(?:What is|What's|Tell me) the opposite of \"?([a-z]+)\"?[?.]", q):
        pairs = dict(OPPOSITES) | {b: a_ for a_, b in OPPOSITES}
        assert a == f"The opposite of {m.group(1)} is {pairs[m.group(1)]}."
    elif m := re.fullmatch(r"What comes (after|before) ([A-Z][a-z]+)\?", q):
        cycle = ("Monday Tuesday Wednesday Thursday Friday Saturday Sunday Monday ".split(),
                 "January February March April May June July August September October November December "
                 "January".split())
        seq = next(c for c in cycle if m.group(2) in c)
        i = seq.index(m.group(2))
        other = seq[i + 1] if m.group(1) == "after" else seq[i - 1 if i else len(seq) - 2]
        assert a == f"{other} comes {m.group(1)} {m.group(2)}."
    else:
        return False
    return True


def test_conversations_follow_the_chat_format_and_answers_are_right():
    recognised = 0
    kinds = set()
    for i in range(N):
        messages = generate_conversation(sample_rng(2, i))
        assert messages == generate_conversation(sample_rng(2, i))
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2), roles
        text = format_conversation(messages)
        assert text.count("<|user|>\n") == len(roles) // 2 and text.endswith("\n")
        for q, a in zip(messages[-len(roles)::2], messages[-len(roles) + 1::2]):
            assert q["content"] and a["content"] and "\n" not in q["content"] + a["content"]
            if _check_answer(q["content"], a["content"]):
                recognised += 1
                kinds.add(q["content"].split(" ")[0])
    assert recognised > N // 2 and len(kinds) >= 6


def test_size_comparisons_agree_with_their_order():
    from hamner.data.chat_gen import BY_SIZE

    rank = {thing: i for i, thing in enumerate(BY_SIZE)}
    seen = 0
    for i in range(N):
        messages = [m["content"] for m in generate_conversation(sample_rng(3, i)) if m["role"] != "system"]
        for q, a in zip(messages[::2], messages[1::2]):
            m = re.fullmatch(r"Is ((?:a|an) [a-z]+) (bigger|smaller) than ((?:a|an) [a-z]+)\?", q)
            if m:
                seen += 1
                x, y = rank[m.group(1)], rank[m.group(3)]
                assert abs(x - y) >= 2
                assert a.startswith("Yes" if (x > y) == (m.group(2) == "bigger") else "No"), (q, a)
                assert a.endswith(f"{m.group(1)} is {'bigger' if x > y else 'smaller'} than {m.group(3)}."), (q, a)
    assert seen > 20


@pytest.mark.parametrize("cls", [StorySource, ChatSource])
@pytest.mark.parametrize("spec", ["bytes", "cosmo2"])
def test_rows_pack_tokenized_documents_with_eos(cls, spec, shared_data):
    tok = ByteTokenizer() if spec == "bytes" else load_tokenizer(str(shared_data / "cosmo2_tokenizer.json"))
    source = cls(tok)
    assert isinstance(source, RowSource) and source.name == {StorySource: "stories", ChatSource: "chat"}[cls]
    rows = source.rows(3, 700, seed=9, difficulty=2.0)
    assert rows.shape == (3, 700) and rows.dtype == np.int32
    assert np.array_equal(rows, source.rows(3, 700, seed=9, difficulty=1.0))
    assert not np.array_equal(rows, source.rows(3, 700, seed=10, difficulty=1.0))
    expected = [i for ids in tok.encode_batch(source.texts(200, seed=9)) for i in ids + [tok.eos_id]]
    assert rows.ravel().tolist() == expected[:2100]
    assert tok.decode(rows[0].tolist()).split("<|endoftext|>")[0] == source.texts(1, seed=9)[0]
    assert source.rows(0, 5, 1, 1.0).shape == (0, 5)
