"""The one error class for bad user input in the data layer.

Commands catch it and print `error: <message>` with exit status 2, so every message is one line
that names the problem (a missing file, an unknown field, a foreign tokenizer) and how to fix it.
"""
from __future__ import annotations


class DataError(ValueError):
    """A one-line, user-facing problem with data, tokenizers or shards."""
