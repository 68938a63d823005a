"""SIGINT / SIGTERM as a request to stop after the current step (so the loop can save and return).

The first signal only records its name; Ctrl-C twice stops at once. A SIGTERM after Ctrl-C
(torchrun forwards one to its workers) does not cut the save short. A Ctrl-C while a run shuts down
(`deferred_interrupts`) is raised once the shutdown is done, never inside a finalizer, where Python
would print "Exception ignored" and carry on to exit 0.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block, SIGINT is only noted; after it, a noted one is raised as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


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
