"""Procedural chats in Hamner's chat format (data/chat_format.py) for the no-download demo run.

Greetings, opposites, yes/no size and number comparisons, number words, small sums and simple facts
about everyday things, each with several phrasings and an answer computed from our own tables, so every
answer is right. A conversation is an optional system line, one to three exchanges, and sometimes a
greeting before and a thank-you after. `ChatSource` packs formatted conversations into rows.
"""
from __future__ import annotations

import random

from hamner.data.chat_format import format_conversation
from hamner.data.generated_text import GeneratedTextSource

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.", "You are a friendly assistant who answers briefly.",
    "You are Hamner, a small and helpful language model.", "Answer the user's questions clearly and kindly.",
)
GREETINGS: tuple[tuple[str, str], ...] = (
    ("Hi!", "Hello! How can I help you today?"), ("Hello.", "Hi there! What would you like to know?"),
    ("Good morning!", "Good morning! How can I help?"), ("Hey there.", "Hey! What can I do for you?"),
    ("How are you?", "I am doing well, thank you! How can I help you?"),
    ("Good evening.", "Good evening! What would you like to talk about?"),
)
THANKS: tuple[tuple[str, str], ...] = (
    ("Thank you!", "You're welcome!"), ("Thanks a lot.", "Happy to help!"),
    ("Great, thanks.", "You're welcome. Have a nice day!"), ("That helps, thank you.", "Glad I could help!"),
)
OPPOSITES: tuple[tuple[str, str], ...] = (  # every word in one pair only, so each question has one answer
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"), ("happy", "sad"),
    ("open", "closed"), ("wet", "dry"), ("light", "dark"), ("full", "empty"), ("loud", "quiet"),
    ("early", "late"), ("in", "out"), ("clean", "dirty"), ("thick", "thin"), ("near", "far"),
    ("first", "last"), ("push", "pull"), ("win", "lose"), ("give", "take"), ("buy", "sell"),
    ("above", "below"), ("rich", "poor"), ("strong", "weak"), ("inside", "outside"), ("always", "never"),
    ("asleep", "awake"), ("before", "after"), ("yes", "no"), ("question", "answer"), ("summer", "winter"),
)
# Everyday things from smallest to largest; questions only pair things at least two steps apart.
BY_SIZE: tuple[str, ...] = (
    "an ant", "a coin", "a mouse", "an apple", "a book", "a cat", "a chair", "a dog", "a bicycle", "a horse",
    "a car", "an elephant", "a bus", "a house", "a whale", "a ship", "a mountain",
)
COLORS: tuple[tuple[str, str], ...] = (
    ("the sky on a clear day", "blue"), ("grass", "green"), ("a ripe banana", "yellow"), ("snow", "white"),
    ("coal", "black"), ("a ripe strawberry", "red"), ("an orange", "orange"), ("milk", "white"),
    ("a lemon", "yellow"), ("a fire truck", "red"), ("a frog", "green"), ("chocolate", "brown"),
)
SOUNDS: tuple[tuple[str, str], ...] = (
    ("a dog", "barks"), ("a cat", "meows"), ("a cow", "moos"), ("a duck", "quacks"), ("a lion", "roars"),
    ("a sheep", "bleats"), ("a horse", "neighs"), ("an owl", "hoots"), ("a snake", "hisses"), ("a bee", "buzzes"),
)
LEGS: tuple[tuple[str, str, int], ...] = (
    ("a spider", "spiders", 8), ("an ant", "ants", 6), ("a bee", "bees", 6), ("a dog", "dogs", 4),
    ("a cat", "cats", 4), ("a horse", "horses", 4), ("a bird", "birds", 2), ("a chicken", "chickens", 2),
    ("a person", "people", 2), ("a snake", "snakes", 0), ("a fish", "fish", 0), ("a cow", "cows", 4),
)
USES: tuple[tuple[str, str], ...] = (
    ("a spoon", "to eat soup"), ("scissors", "to cut paper"), ("an umbrella", "to stay dry in the rain"),
    ("a key", "to open a lock"), ("a broom", "to sweep the floor"), ("a pillow", "to rest your head"),
    ("a toothbrush", "to clean your teeth"), ("a clock", "to tell the time"), ("a pencil", "to write and draw"),
    ("a towel", "to dry yourself"), ("a ladder", "to reach high places"), ("a map", "to find the way"),
)
MAKERS: tuple[tuple[str, str], ...] = (
    ("bees", "honey"), ("cows", "milk"), ("hens", "eggs"), ("sheep", "wool"), ("spiders", "webs"),
    ("bakers", "bread"), ("trees", "leaves and fruit"), ("clouds", "rain"),
)
DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS: tuple[str, ...] = ("January", "February", "March", "April", "May", "June", "July", "August",
                           "September", "October", "November", "December")
COUNTS: tuple[tuple[str, str, int], ...] = (  # (how many ..., there are N ...)
    ("days are in a week", "days in a week", 7), ("months are in a year", "months in a year", 12),
    ("hours are in a day", "hours in a day", 24), ("minutes are in an hour", "minutes in an hour", 60),
    ("seconds are in a minute", "seconds in a minute", 60), ("sides does a triangle have", "sides on a triangle", 3),
    ("sides does a square have", "sides on a square", 4), ("fingers are on one hand", "fingers on one hand", 5),
    ("days are in a weekend", "days in a weekend", 2), ("wheels does a tricycle have", "wheels on a tricycle", 3),
)
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words of 0 <= n <= 9999: 42 -> "forty-two", 305 -> "three hundred five"."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number_words covers 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    big, rest = (n // 1000, "thousand") if n >= 1000 else (n // 100, "hundred")
    tail = n % 1000 if n >= 1000 else n % 100
    return f"{_ONES[big]} {rest}" + ("" if tail == 0 else " " + number_words(tail))


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _opposite(rng: random.Random) -> tuple[str, str]:
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    q = rng.choice([f"What is the opposite of {a}?",
                    f"What's the opposite of \"{a}\"?", f"Tell me the opposite of {a}."])
    return q, f"The opposite of {a} is {b}."


def _size(rng: random.Random) -> tuple[str, str]:
    i, j = rng.sample(range(len(BY_SIZE)), 2)
    while abs(i - j) < 2:
        i, j = rng.sample(range(len(BY_SIZE)), 2)
    a, b = BY_SIZE[i], BY_SIZE[j]
    word = rng.choice(["bigger", "smaller"])
    yes = (i > j) == (word == "bigger")
    truth = "bigger" if i > j else "smaller"
    return f"Is {a} {word} than {b}?", f"{'Yes' if yes else 'No'}, {a} is {truth} than {b}."


def _numbers(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(1, 101), 2)
    if rng.random() < 0.5:
        word = rng.choice(["bigger", "smaller"])
        yes = (a > b) == (word == "bigger")
        answer = f"{'Yes' if yes else 'No'}, {a} is {'bigger' if a > b else 'smaller'} than {b}."
        return f"Is {a} {word} than {b}?", answer
    return f"Which is bigger, {a} or {b}?", f"{max(a, b)} is bigger than {min(a, b)}."


def _number_words(rng: random.Random) -> tuple[str, str]:
    n = rng.choice([rng.randrange(0, 21), rng.randrange(21, 100), rng.randrange(100, 1000), rng.randrange(1000, 10000)])
    words = number_words(n)
    if rng.random() < 0.5:
        return rng.choice([f"How do you write {n} in words?",
                           f"Spell out the number {n}."]), f"{n} in words is {words}."
    return f"What number is {words}?", f"{_cap(words)} is {n}."


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(0, 21), rng.randrange(0, 21)
    op = rng.choice(["plus", "minus", "times"])
    if op == "minus" and b > a:
        a, b = b, a
    value = a + b if op == "plus" else a - b if op == "minus" else a * b
    q = rng.choice([f"What is {a} {op} {b}?", f"Can you tell me what {a} {op} {b} is?"])
    return q, f"{a} {op} {b} is {value}."


def _fact(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(7)
    if kind == 0:
        thing, color = rng.choice(COLORS)
        return rng.choice([f"What color is {thing}?", f"Tell me the color of {thing}."]), f"{_cap(thing)} is {color}."
    if kind == 1:
        animal, sound = rng.choice(SOUNDS)
        return f"What sound does {animal} make?", f"{_cap(animal)} {sound}."
    if kind == 2:
        one, many, legs = rng.choice(LEGS)
        answer = f"{_cap(one)} has no legs." if legs == 0 else f"{_cap(one)} has {number_words(legs)} legs."
        return rng.choice([f"How many legs does {one} have?", f"How many legs do {many} have?"]), answer
    if kind == 3:
        thing, use = rng.choice(USES)
        return rng.choice([f"What do you use {thing} for?", f"What is {thing} for?"]), f"You use {thing} {use}."
    if kind == 4:
        maker, made = rng.choice(MAKERS)
        return f"What do {maker} give us?", f"{_cap(maker)} give us {made}."
    if kind == 5:
        names = rng.choice([DAYS, MONTHS])
        i = rng.randrange(len(names))
        if rng.random() < 0.5:
            return f"What comes after {names[i]}?", f"{names[(i + 1) % len(names)]} comes after {names[i]}."
        return f"What comes before {names[i]}?", f"{names[i - 1]} comes before {names[i]}."
    question, things, count = rng.choice(COUNTS)
    return f"How many {question}?", f"There are {rng.choice([str(count), number_words(count)])} {things}."


TOPICS = (_opposite, _size, _numbers, _number_words, _arithmetic, _fact)


def generate_conversation(rng: random.Random) -> list[dict[str, str]]:
    """One conversation as [{role, content}, ...], deterministic given the generator's state."""
    messages: list[dict[str, str]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    pairs = [rng.choice(GREETINGS)] if rng.random() < 0.4 else []
    pairs += [rng.choice(TOPICS)(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        pairs.append(rng.choice(THANKS))
    for question, answer in pairs:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


class ChatSource(GeneratedTextSource):
    """Row source of generated conversations in the chat format (name "chat"); difficulty is ignored."""

    name = "chat"

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, lambda rng: format_conversation(generate_conversation(rng)))
