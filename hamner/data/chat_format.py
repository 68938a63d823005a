"""The one chat format Hamner trains and chats with.

A conversation is written as turns `<|role|>\\n{content}\\n` (roles: system, user, assistant) and a
training document ends with the tokenizer's end-of-text token. A reply ends where the model
starts a new turn marker or emits end-of-text, so inference stops on exactly what training showed.

Content is data, never structure: a turn marker or `<|endoftext|>` inside a message is escaped
(`<|user|>` becomes `<\\|user|>`), so a user message cannot open an assistant turn that would be
trained as a reply, nor end a document, in training text and at chat time alike.
"""
from __future__ import annotations

import re

from hamner.data.tokenizer import EOT
from hamner.errors import DataError

ROLES: tuple[str, ...] = ("system", "user", "assistant")
MARKERS: dict[str, str] = {role: f"<|{role}|>" for role in ROLES}
# Text that ends an assistant reply during generation (end-of-text is handled as a token id).
STOP_STRINGS: tuple[str, ...] = (MARKERS["user"], MARKERS["system"], MARKERS["assistant"])
# A turn marker at the start of the text or of a line, followed by its newline.
_TURN = re.compile(r"(?:^|(?<=\n))<\|(" + "|".join(ROLES) + r")\|>\n")
# Any marker the format gives meaning to, wherever it stands in content.
_SPECIAL = re.compile("|".join(re.escape(m) for m in (*MARKERS.values(), EOT)))


def escape_content(content: str) -> str:
    """`content` with every turn marker and end-of-text marker escaped (`<|` -> `<\\|`), so it stays text."""
    return _SPECIAL.sub(lambda m: "<\\|" + m.group(0)[2:], content)


def format_turn(role: str, content: str) -> str:
    """One turn: the role marker, a newline, the content (markers in it escaped), a newline."""
    if role not in MARKERS:
        raise DataError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise DataError(f"{role} content must be text, got {type(content).__name__}")
    return f"{MARKERS[role]}\n{escape_content(content.strip())}\n"


def format_conversation(messages: list[dict[str, str]]) -> str:
    """A whole conversation ([{role, content}, ...]) as training text, without the end-of-text token."""
    return "".join(format_turn(m["role"], m["content"]) for m in messages)


def prompt_for_reply(messages: list[dict[str, str]]) -> str:
    """The conversation so far followed by an open assistant marker, ready for generation."""
    return format_conversation(messages) + MARKERS["assistant"] + "\n"


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the assistant's replies in chat-format text.

    A span runs from the first character of the reply through its closing newline and the marker
    that opens the next turn (e.g. `<|user|>`, not its newline): that marker is how a reply ends
    at inference. The `<|assistant|>` header itself is not in the span. A reply that is the last
    turn runs to the end of the text (the end-of-text token that follows belongs to it too).
    """
    turns = list(_TURN.finditer(text))
    spans = []
    for turn, following in zip(turns, turns[1:] + [None]):
        if turn.group(1) == "assistant":
            end = len(text) if following is None else following.end() - 1
            spans.append((turn.end(), end))
    return spans
