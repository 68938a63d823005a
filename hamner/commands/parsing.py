"""What every Hamner command shares: one-line argument errors and one way to end on a user error.

    @command(interrupted="interrupted; ...")
    def main(argv: list[str] | None = None, prog: str = "hamner x") -> int:
        args = ArgumentParser(prog=prog, ...).parse_args(argv)
        ...

A `HamnerError` or an `OSError` (an unwritable path, a full disk) ends the command with one
`error: <message>` line on stderr and exit status 2; Ctrl-C ends it with one line and status 130.
Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn

from hamner.errors import HamnerError

USER_ERROR = 2
INTERRUPTED = 130

Main = Callable[..., int]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error style: one `error: ...` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def fail(message: str) -> int:
    """Print `message` as the command's one error line; returns the exit status for a user error."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return USER_ERROR


def command(interrupted: str = "interrupted") -> Callable[[Main], Main]:
    """Decorate a command's `main(argv, ...)`: user errors become one line and exit 2, Ctrl-C exits 130.

    `interrupted` is the line printed (after `error: `) when the user presses Ctrl-C; say there
    what was kept and how to continue.
    """

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except (HamnerError, OSError) as exc:
                return fail(str(exc) or type(exc).__name__)
            except KeyboardInterrupt:
                print(f"error: {interrupted}", file=sys.stderr)
                return INTERRUPTED

        return run

    return wrap
