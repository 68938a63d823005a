"""Background prefetching of training batches onto the device.

A daemon thread calls make_batch(step) for start_step, start_step + 1, ..., splits each window
batch into inputs and targets (make_batch may return (rows, loss masks): targets whose mask is 0
become the ignored index), and pins them when the device is CUDA; `next()` then copies them
with non_blocking=True, so the host-to-device copy overlaps the compute already queued. An
exception in the thread is raised again by the next call to `next()`.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np
import torch

from hamner.data.loss_masks import targets_from_mask


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Batches for consecutive steps, produced `depth` ahead in a background thread."""

    def __init__(self, make_batch: Callable[[int], np.ndarray | tuple[np.ndarray, np.ndarray | None]],
                 start_step: int, device: torch.device | str,
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
                made = self._make_batch(step)
                rows, mask = made if isinstance(made, tuple) else (made, None)
                rows = np.asarray(rows, dtype=np.int64)
                if rows.ndim != 2 or rows.shape[1] < 2:
                    raise ValueError(f"make_batch({step}) gave shape {rows.shape}; expected [batch, row_len >= 2]")
                pair = (torch.from_numpy(np.ascontiguousarray(rows[:, :-1])),
                        torch.from_numpy(targets_from_mask(rows, mask)))
                if pin:
                    pair = (pair[0].pin_memory(), pair[1].pin_memory())
                if not self._put(pair):
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

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, targets) of the next step, int64 on the device: idx = w[:, :-1], targets = w[:, 1:]
        (-100 where the loss mask leaves a target out)."""
        if self._stop.is_set():
            raise RuntimeError("the prefetcher is closed")
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        self.step += 1
        idx, targets = item
        return idx.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

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
