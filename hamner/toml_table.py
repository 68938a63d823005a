"""Typed, checked access to the tables of a TOML file, for every file Hamner reads as data.

Curricula, tournament specs and model files are TOML files a user writes by hand. Each table of
such a file is read through a `TomlTable`, which refuses keys it does not know and values of the
wrong type or range with one line naming the place, `<where>.<key>: <problem>` (e.g.
`bad.toml: stages[2].lr: must be a finite number, got 'x'`), raised as the `HamnerError` subclass
its caller names. It sits beside hamner/errors.py, below every room, so the model room can read
model files with it.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from hamner.errors import HamnerError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib


def read_toml(path: Path, where: str, error: type[HamnerError]) -> dict[str, Any]:
    """The parsed TOML file at `path`; an unreadable or malformed file raises `error` naming `where`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from None
    return parse_toml(text, where, error)


def parse_toml(text: str, where: str, error: type[HamnerError]) -> dict[str, Any]:
    """The parsed TOML `text`; malformed text raises `error` naming `where`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from None


def dump_toml(table: dict[str, Any]) -> str:
    """`table` (what `read_toml` returns: strings, numbers, booleans, lists and tables) as TOML text that reads
    back equal: arrays of tables as `[[key]]` blocks after the top-level keys, every other table inline. For
    files Hamner writes from ones it read (a curriculum fitted to a tournament's budget)."""
    blocks = {k: v for k, v in table.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if k not in blocks]
    for key, items in blocks.items():
        for item in items:
            lines += ["", f"[[{_toml_key(key)}]]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "a").replace("-", "a").isalnum() and key.isascii() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):  # JSON's string escapes and Python's float repr are valid TOML
        return json.dumps(value) if isinstance(value, str) else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


class TomlTable:
    """One TOML table called `where`, with keys from `allowed` (any key when None); every failure is one
    `error` naming `where.key`."""

    def __init__(self, table: Any, where: str, allowed: Collection[str] | None, error: type[HamnerError]) -> None:
        if not isinstance(table, dict):
            raise error(f"{where}: must be a table, got {table!r}")
        unknown = [] if allowed is None else sorted(set(table) - set(allowed))
        if unknown:
            raise error(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        self.table, self.where, self.error = table, where, error

    def fail(self, key: str, problem: str) -> HamnerError:
        """The error to raise for `problem` with the value at `key`."""
        return self.error(f"{self.where}.{key}: {problem}")

    def has(self, key: str) -> bool:
        """Whether the table sets `key`."""
        return key in self.table

    def required(self, *keys: str) -> None:
        """Refuse the table unless it sets every one of `keys`."""
        for key in keys:
            if key not in self.table:
                raise self.error(f"{self.where}: missing required key {key!r}")

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int | None:
        """The whole number at `key` (`default` when unset), at least `minimum`."""
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: float | None = None, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False) -> float | None:
        """The finite number at `key` (`default` when unset) within [low, high], or (low, high] if `low_open`."""
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            bound = f"> {low}" if low_open else f">= {low}"
            raise self.fail(key, f"must be {bound} and <= {high}, got {value}" if high < math.inf
                            else f"must be {bound}, got {value}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """The true/false value at `key` (`default` when unset)."""
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        """The non-empty string at `key` (`default` when unset), one of `choices` when given."""
        value = self.table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def int_list(self, key: str, default: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """The non-empty list of distinct whole numbers >= 0 at `key` (`default` when unset)."""
        value = self.table.get(key, default)
        if value is None or isinstance(value, tuple):
            return value
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
            raise self.fail(key, f"must be a non-empty list of whole numbers >= 0, got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(key, f"repeats a value: {value}")
        return tuple(value)

    def typed(self, key: str, types: tuple[type, ...], described: str) -> Any:
        """The value at `key`, an instance of one of `types` (a bool only where bool is one of them);
        `described` names the type in the message (e.g. "int | None")."""
        value = self.table.get(key)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.fail(key, f"must be {described}, got {value!r}")
        return value
