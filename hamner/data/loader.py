"""Background prefetching of training batches onto the device.

A daemon thread calls make_batch(step) for start_step, start_step + 1, ... (each a `Batch`, see
data.batch) and pins it when the device is CUDA; `next()` then copies it with non_blocking=True,
so the host-to-device copy overlaps the compute already queued. An exception in the thread is
raised again by the next call to `next()`.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

from hamner.data.batch import Batch


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Batches for consecutive steps, produced `depth` ahead in a background thread."""

    def __init__(self, make_batch: Callable[[int], Batch], start_step: int, device: torch.device | str,
                 depth: int = 2) -> None:
        self.device = torch.device(device)
        self.step = start_step  # the step of the batch the next call to next() returns
        self._make_batch = make_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(start_step,), name="hamner-prefetch", daemon=True)
        self._thread.start()

    def _work(self, step: int) -> None:
        pin = self.device.type == "cuda"
        try:
            while not self._stop.is_set():
                batch = self._make_batch(step)
                if not self._put(batch.pin_memory() if pin else batch):
                    return
                step += 1
        except BaseException as e:  # surfaces in the caller's next()
            self._put(_Failure(e))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Batch:
        """The batch of the next step, on the device."""
        if self._stop.is_set():
            raise RuntimeError("the prefetcher is closed")
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        self.step += 1
        return item.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the thread and drop the batches it made ahead."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
