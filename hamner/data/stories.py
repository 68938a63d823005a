"""Procedural tiny stories (characters, objects, places, feelings, simple plots) for the no-download demo run.

Our own word lists and sentence templates, in the spirit of TinyStories: short sentences, a small
vocabulary, a problem and its resolution. Every sentence has a few interchangeable wordings and the
story picks among seven plots, so a few thousand stories rarely repeat. `StorySource` packs them into
rows (see data/generated_text.py).
"""
from __future__ import annotations

import random

from hamner.data.generated_text import GeneratedTextSource

GIRL_NAMES: tuple[str, ...] = tuple(
    "Lily Mia Rosa Ella Nora Ava Zoe Ruby Hazel Ivy Luna Clara Maya Ada Iris Daisy Poppy Nina Sara Tess".split())
BOY_NAMES: tuple[str, ...] = tuple(
    "Tom Ben Leo Max Sam Finn Jack Theo Oscar Eli Hugo Noah Otto Ravi Milo Jonas Leon Kai Omar Felix".split())
KINDS: tuple[str, ...] = (  # "girl" and "boy" fix the pronoun; animals get either, as in picture books
    "little girl", "little boy", "small dog", "fluffy cat", "brave bunny", "tiny bird", "curious fox",
    "young bear", "happy duck", "little mouse", "kind elephant", "playful puppy", "small turtle",
    "clever owl", "shy squirrel", "little frog",
)
OBJECTS: tuple[str, ...] = (
    "red ball", "shiny key", "blue kite", "floppy hat", "toy boat", "little drum", "yellow umbrella",
    "teddy bear", "picture book", "music box", "green bucket", "paper crown", "wooden train",
    "soft blanket", "silver bell", "striped scarf", "big balloon", "magic stone", "toy car", "box of crayons",
)
PLACES: tuple[tuple[str, str], ...] = (  # (the place, being there)
    ("the park", "in the park"), ("the beach", "at the beach"), ("the forest", "in the forest"),
    ("the garden", "in the garden"), ("the farm", "on the farm"), ("the lake", "by the lake"),
    ("the library", "at the library"), ("the playground", "at the playground"), ("the hill", "on the hill"),
    ("the market", "at the market"), ("the meadow", "in the meadow"), ("the river", "by the river"),
    ("the zoo", "at the zoo"), ("the woods", "in the woods"), ("the town square", "in the town square"),
)
HIDING_SPOTS: tuple[str, ...] = (
    "under a bench", "behind a big tree", "in the tall grass", "next to a rock", "under a pile of leaves",
    "inside an old box", "by the fence", "near the water",
)
OPENINGS: tuple[str, ...] = (
    "Once upon a time", "One day", "One sunny morning", "Early one morning", "Last summer",
    "On a windy afternoon", "One cold winter day", "Long ago",
)
FEARS: tuple[tuple[str, str], ...] = (  # (what scares the hero, what trying it looks like)
    ("the dark", "turned off the light and listened"), ("the big slide", "climbed up and slid down"),
    ("the deep water", "put one foot in the water"), ("thunder", "sat by the window during the storm"),
    ("the tall ladder", "climbed one step at a time"), ("the noisy train", "stood on the platform"),
)
TROUBLES: tuple[tuple[str, str, str], ...] = (  # (who is in trouble, the trouble, the help)
    ("a little bird", "was stuck in a bush", "gently pulled the branches apart"),
    ("an old man", "dropped a bag of apples", "picked up every apple"),
    ("a small kitten", "could not get down from a wall", "held out a soft blanket"),
    ("a baby duck", "had lost its mother", "walked with it to the pond"),
    ("a tired ant", "could not carry a big crumb", "carried the crumb to the ant hill"),
    ("a lost puppy", "was crying by the road", "found the house where it lived"),
)
WISHES: tuple[tuple[str, str, str], ...] = (  # (the wish, the first try going wrong, what helped)
    ("fly a kite high in the sky", "the kite fell down", "waiting for a strong wind"),
    ("bake a cake", "the cake was flat", "adding a little more flour"),
    ("build a tall tower of blocks", "the tower fell over", "putting the big blocks at the bottom"),
    ("catch a fish", "the fish swam away", "sitting very still"),
    ("draw a beautiful picture", "the colors got mixed up", "letting each color dry"),
    ("learn to ride a bike", "the bike wobbled and tipped over", "looking ahead and not at the wheel"),
)
GAMES: tuple[str, ...] = ("hide and seek", "tag", "catch", "a guessing game", "pretend pirates", "hopscotch")
MORALS: dict[str, tuple[str, ...]] = {
    "lost": ("Sometimes the things we lose are closer than we think.", "Friends help us find what we lost."),
    "share": ("Sharing makes playing more fun.", "When we share, everyone can smile."),
    "fear": ("Being brave means trying even when you are scared.", "Things are less scary once you try them."),
    "friend": ("A friendly hello can start a friendship.", "New friends can be found anywhere."),
    "help": ("Helping others makes our hearts warm.", "Even small helpers can do big things."),
    "wish": ("If at first you do not succeed, try again.", "Patience helps us reach our dreams."),
    "storm": ("After the rain, the sun always comes back.", "It is good to have a friend when the sky is dark."),
}


class _Character:
    def __init__(self, rng: random.Random, avoid: str = "") -> None:
        self.kind = rng.choice(KINDS)
        girl = self.kind.endswith("girl") or not self.kind.endswith("boy") and rng.random() < 0.5
        self.name = rng.choice([n for n in (GIRL_NAMES if girl else BOY_NAMES) if n != avoid])
        self.he, self.his, self.him = ("she", "her", "her") if girl else ("he", "his", "him")
        self.He = self.he.capitalize()


def _lost(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    obj, spot = rng.choice(OBJECTS), rng.choice(HIDING_SPOTS)
    return [
        rng.choice([f"{a.name} had a {obj}.", f"{a.name} loved {a.his} {obj} more than anything."]),
        f"{a.He} took it everywhere, even to {place}.",
        rng.choice([f"But one day, the {obj} was gone!",
                    f"When it was time to go home, {a.he} could not find the {obj}."]),
        rng.choice([f"{a.name} felt very sad.", f"{a.name} started to cry.", f"{a.name} was worried."]),
        f"{b.name}, a {b.kind}, saw {a.him} and asked, \"What is wrong?\"",
        f"\"I lost my {obj},\" said {a.name}.",
        rng.choice([f"\"Let's look for it together,\" said {b.name}.", f"\"I will help you,\" said {b.name}."]),
        f"They looked everywhere. At last, {b.name} found the {obj} {spot}.",
        rng.choice([f"{a.name} was so happy that {a.he} hugged {b.name}.",
                    f"{a.name} smiled and said, \"Thank you!\""]),
        rng.choice(MORALS["lost"]),
    ]


def _share(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    obj = rng.choice(OBJECTS)
    return [
        f"{a.name} was playing with a {obj} {at}.",
        f"{b.name} came by and asked, \"Can I play with your {obj} too?\"",
        rng.choice([f"\"No, it is mine,\" said {a.name}.", f"{a.name} held the {obj} close and said no."]),
        f"{b.name} looked sad and sat down alone.",
        rng.choice([f"{a.name} thought about it.", f"Soon {a.name} did not feel good inside."]),
        f"{a.He} walked over to {b.name} and said, \"Here, we can play together.\"",
        rng.choice([f"They played with the {obj} all afternoon.",
                    f"They took turns with the {obj} until the sun went down."]),
        f"{a.name} felt {rng.choice(['happy', 'warm inside', 'glad'])}.",
        rng.choice(MORALS["share"]),
    ]


def _fear(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    fear, trying = rng.choice(FEARS)
    return [
        f"{a.name} was scared of {fear}.",
        rng.choice([f"Every time {a.he} thought about it, {a.his} tummy felt funny.",
                    f"{a.He} always stayed far away."]),
        f"One day {a.he} went to {place} with {b.name}, a {b.kind}.",
        f"\"You can do it,\" said {b.name}. \"I will be right here.\"",
        f"{a.name} took a deep breath and {trying}.",
        rng.choice(["It was not so bad after all!", "Nothing bad happened.", "It was even a little fun!"]),
        f"{a.name} felt {rng.choice(['proud', 'brave', 'very proud'])}.",
        rng.choice(MORALS["fear"]),
    ]


def _friend(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    game = rng.choice(GAMES)
    return [
        f"{a.name} was all alone {at}.",
        rng.choice([f"{a.He} felt lonely.", f"{a.He} wished {a.he} had someone to play with."]),
        f"Then {a.he} saw a {b.kind} named {b.name}.",
        rng.choice([f"{a.name} walked up and said, \"Hello! Do you want to play?\"",
                    f"\"Hi, I am {a.name},\" {a.he} said with a smile."]),
        f"{b.name} nodded. They played {game} until they were tired.",
        rng.choice([f"From that day on, {a.name} and {b.name} were best friends.",
                    f"They promised to meet {at} again tomorrow."]),
        rng.choice(MORALS["friend"]),
    ]


def _help(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    who, trouble, help_ = rng.choice(TROUBLES)
    return [
        f"{a.name} was on {a.his} way to {place}.",
        f"{a.He} saw that {who} {trouble}.",
        rng.choice([f"\"Oh no!\" said {a.name}. \"I must help.\"", f"{a.name} did not walk away."]),
        f"{a.He} {help_}.",
        rng.choice(["\"Thank you so much,\" came a small voice.", f"Everyone was happy, and {a.name} was happy too."]),
        f"That night, {a.name} told {b.name} all about it, and {b.name} said, \"You were very kind.\"",
        rng.choice(MORALS["help"]),
    ]


def _wish(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    wish, failure, trick = rng.choice(WISHES)
    return [
        f"{a.name} wanted to {wish}.",
        f"{a.He} tried {at}, but {failure}.",
        rng.choice([f"{a.name} felt sad, but {a.he} did not give up.",
                    f"{a.name} was upset, but only for a little while."]),
        f"{b.name} the {b.kind} said, \"Try {trick}.\"",
        f"So {a.name} tried again, {trick}.",
        f"This time it worked! {a.name} was able to {wish}.",
        rng.choice(MORALS["wish"]),
    ]


def _storm(rng: random.Random, a: _Character, b: _Character, place: str, at: str) -> list[str]:
    return [
        f"{a.name} and {b.name} were playing {at}.",
        rng.choice(["Suddenly, dark clouds filled the sky.", "The wind began to blow and the sky turned gray."]),
        rng.choice(["Big drops of rain began to fall.", "Then came a loud clap of thunder."]),
        f"\"Quick, let's find a dry place!\" said {b.name}.",
        f"They ran and hid {rng.choice(['under a big tree', 'in a little shed', 'under a bridge'])}.",
        f"{a.name} was {rng.choice(['cold', 'scared', 'wet'])}, so {b.name} sat close to {a.him}.",
        rng.choice(["Soon the rain stopped and a rainbow came out.",
                    "After a while the sun came back and the birds sang."]),
        rng.choice(MORALS["storm"]),
    ]


PLOTS = (_lost, _share, _fear, _friend, _help, _wish, _storm)


def generate_story(rng: random.Random) -> str:
    """One short story, deterministic given the generator's state."""
    a = _Character(rng)
    b = _Character(rng, avoid=a.name)
    place, at = rng.choice(PLACES)
    intro = f"{rng.choice(OPENINGS)}, there was a {a.kind} named {a.name}."
    body = rng.choice(PLOTS)(rng, a, b, place, at)
    return " ".join([intro] + body)


class StorySource(GeneratedTextSource):
    """Row source of generated stories (name "stories"); difficulty is ignored."""

    name = "stories"

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, generate_story)
