"""The prefetcher: consecutive steps, inputs/targets split, errors surface, clean shutdown (CPU; CUDA if present);
the batch value: masked targets and document ids."""
import threading
import time

import numpy as np
import pytest
import torch

from hamner.data.batch import Batch
from hamner.data.loader import Prefetcher
from hamner.data.loss_masks import IGNORE_INDEX


def _rows(step):
    return np.arange(3 * 5).reshape(3, 5) + 100 * step


def _make(step):
    return Batch.from_rows(_rows(step))


def _check_stream(device):
    with Prefetcher(_make, start_step=7, device=device, depth=2) as p:
        for step in range(7, 12):
            batch = p.next()
            idx, targets = batch.idx, batch.targets
            w = torch.from_numpy(_rows(step))
            assert idx.device.type == torch.device(device).type and idx.dtype == targets.dtype == torch.int64
            assert idx.is_contiguous() and targets.is_contiguous()
            assert torch.equal(idx.cpu(), w[:, :-1]) and torch.equal(targets.cpu(), w[:, 1:])
        assert p.step == 12


def test_batches_in_step_order_on_cpu():
    _check_stream("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_through_pinned_memory_on_cuda():
    _check_stream("cuda")


def test_error_in_thread_surfaces_in_caller():
    def make(step):
        if step == 2:
            raise KeyError("bad step 2")
        return _make(step)

    p = Prefetcher(make, start_step=0, device="cpu")
    p.next(), p.next()
    with pytest.raises(KeyError, match="bad step 2"):
        p.next()
    with pytest.raises(RuntimeError, match="closed"):
        p.next()
    with pytest.raises(ValueError, match="row_len >= 2"):
        Prefetcher(lambda step: Batch.from_rows(np.zeros((2, 1))), 0, "cpu").next()


def test_close_stops_the_thread_and_stays_ahead_by_depth():
    asked = []

    def make(step):
        asked.append(step)
        return _make(step)

    p = Prefetcher(make, start_step=0, device="cpu", depth=2)
    p.next()
    deadline = time.monotonic() + 5
    while len(asked) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert asked == [0, 1, 2, 3]  # one consumed, two queued, one waiting to be queued
    p.close()
    assert not any(t.name == "hamner-prefetch" and t.is_alive() for t in threading.enumerate())


def test_a_batch_masks_targets_and_numbers_documents_once():
    rows = np.array([[5, 9, 1, 6, 9, 7]])
    plain = Batch.from_rows(rows, np.array([[1, 1, 0, 1, 1, 1]]))
    assert plain.targets.tolist() == [[9, IGNORE_INDEX, 6, 9, 7]] and plain.segment_ids is None
    packed = Batch.from_rows(rows, document_end=9)
    assert packed.idx.tolist() == [[5, 9, 1, 6, 9]]
    assert packed.segment_ids.dtype == torch.int32 and packed.segment_ids.tolist() == [[0, 0, 1, 1, 1]]
    moved = packed.to("cpu")
    assert torch.equal(moved.segment_ids, packed.segment_ids) and torch.equal(moved.targets, packed.targets)
