"""Durable file writes: every file a run or `prepare` writes survives a kill at any instant.

A file is written to a temporary beside its target, flushed and fsync'ed, renamed over the target
(atomic on POSIX) and the directory fsync'ed, so readers see either the old or the new content,
never a torn one. One home for this, used by checkpoints, run logs and token shards alike.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, chunks: Iterable[bytes], temp: Path | None = None) -> None:
    """Write `chunks` to `temp` (default `.NAME.PID.tmp` beside `path`), fsync it, rename it over
    `path` and fsync the directory; on any failure the temporary is removed and `path` is untouched."""
    path = Path(path)
    temp = temp or path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def move_into_place(temp: Path, path: Path) -> None:
    """Make a finished file that another writer (a library that opens its own file) left at `temp` durable
    under `path`: fsync it, rename it over `path`, fsync the directory."""
    fsync_path(temp)
    os.replace(temp, path)
    fsync_path(Path(path).parent)


def write_text(path: Path, text: str) -> None:
    """`replace_atomically` for UTF-8 text."""
    replace_atomically(path, [text.encode("utf-8")])
