"""A run's wall-clock budget: durations as people write them, the time used, and the steps that still fit.

The trainer stops at the budget, saving a checkpoint as it does on SIGTERM; with `fit_schedule` the
controller fits the last stage's decay to the budget (see `CurriculumController.lr_factor`). Time is read
from an injected clock (`time.perf_counter` in a run), so tests drive it without sleeping. Plain Python.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object) -> float:
    """Seconds of a duration: seconds as a number (5400, "5400") or hours, minutes and seconds in that
    order ("3h", "90m", "2h30m", "45s", "1.5h"). A ValueError of one line unless it is positive."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        match = _DURATION.fullmatch(text)
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif text and match:
            seconds = sum(float(amount) * _UNITS[unit]
                          for amount, unit in zip(match.groups(), _UNITS) if amount is not None)
    if seconds is None or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a time budget is a positive duration such as \"90m\", \"3h\", \"2h30m\" or seconds "
                         f"(5400), got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """E.g. 9000 -> "2h30m", 60 -> "1m", 45.5 -> "45.5s": for messages."""
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


class TimeBudget:
    """`seconds` of wall-clock time for a run, counted across its sessions (a resumed run starts with the
    time its earlier sessions used), and the throughput of this session.

    The trainer calls `start(used)` once before its first step and `step_done()` after every step.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = seconds
        self.clock = clock
        self._origin = clock()
        self._first_step: float | None = None  # clock at the end of this session's first step
        self._last_step = 0.0
        self._steps = 0  # steps done in this session

    def start(self, used: float = 0.0) -> None:
        """Count from now, with `used` seconds already spent (by the earlier sessions of a resumed run)."""
        self._origin = self.clock() - used
        self._first_step, self._steps = None, 0

    def elapsed(self) -> float:
        """Seconds used so far, earlier sessions included."""
        return self.clock() - self._origin

    def remaining(self) -> float:
        """Seconds left (negative once over)."""
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        """Whether the budget is spent."""
        return self.remaining() <= 0

    def step_done(self) -> None:
        """Note the end of one optimizer step (for the throughput)."""
        now = self.clock()
        if self._first_step is None:
            self._first_step = now
        self._last_step = now
        self._steps += 1

    def seconds_per_step(self) -> float | None:
        """Mean wall-clock seconds per step in this session after its first step (whose time holds start-up
        work such as compilation), evaluations and checkpoints included; None until two steps are done."""
        if self._first_step is None or self._steps < 2 or self._last_step <= self._first_step:
            return None
        return (self._last_step - self._first_step) / (self._steps - 1)

    def steps_left(self) -> int | None:
        """How many more steps fit in the budget at the measured throughput; None while it is unknown."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        return max(0, int(self.remaining() / per_step))
