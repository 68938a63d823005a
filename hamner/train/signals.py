"""SIGINT / SIGTERM as a request to stop after the current step (so the loop can save and return).

The first signal only records its name; Ctrl-C twice stops at once. A SIGTERM after Ctrl-C
(torchrun forwards one to its workers) does not cut the save short.
"""
from __future__ import annotations

import signal
from types import FrameType, TracebackType


class StopSignals:
    """Within `with StopSignals() as stop:`, `stop.received` names the first signal caught (or None)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and name == "SIGINT":
            signal.default_int_handler(signum, frame)
        self.received = self.received or name
