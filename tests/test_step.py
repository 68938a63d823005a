"""The step function (accumulation, DDP no_sync, the non-finite skip over one or several optimizers)
and the registry of resumable trainer state."""
import contextlib

import pytest
import torch

from hamner.errors import CheckpointError
from hamner.train.state import OptimizerSlot, Progress, TrainState
from hamner.train.step import train_step


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    return model, x, y


def _mse(model):
    return lambda inputs, targets: torch.nn.functional.mse_loss(model(inputs), targets)


def test_accumulated_micro_batches_step_like_one_batch_and_skip_sync_until_the_last():
    whole, x, y = _model_and_data()
    parts, _, _ = _model_and_data()
    result = train_step(_mse(whole), [(x, y)], torch.optim.SGD(whole.parameters(), lr=0.1))
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(True)
        yield

    halves = train_step(_mse(parts), [(x[:2], y[:2]), (x[2:], y[2:])], torch.optim.SGD(parts.parameters(), lr=0.1),
                        no_sync=no_sync)
    assert len(entered) == 1  # gradients are all-reduced on the last micro-batch only
    assert float(halves.loss) == pytest.approx(float(result.loss)) and bool(halves.finite)
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
        assert a.grad is None and b.grad is None  # zeroed (set to None) after the step


@pytest.mark.parametrize("poison", [False, True])
def test_a_list_of_optimizers_is_stepped_or_skipped_together(poison):
    model, x, y = _model_and_data()
    before = [p.detach().clone() for p in model.parameters()]
    optimizers = [torch.optim.AdamW([model.weight], lr=0.1), torch.optim.SGD([model.bias], lr=0.1)]
    loss = _mse(model)
    result = train_step((lambda i, t: loss(i, t) * float("nan")) if poison else loss, [(x, y)], optimizers)
    assert bool(result.finite) is not poison
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())]
    assert moved == [not poison, not poison]


def test_registry_saves_and_restores_every_part_by_name():
    model, _, _ = _model_and_data()
    state = TrainState()
    progress = Progress(step=7, tokens=700, elapsed=1.5)
    slot = OptimizerSlot(lambda: torch.optim.AdamW(model.parameters(), lr=0.1))
    state.register("progress", progress)
    state.register("optimizer", slot)
    with pytest.raises(ValueError, match="registered twice"):
        state.register("progress", Progress())
    saved = state.state_dict()
    assert list(saved) == ["progress", "optimizer"] and saved["progress"]["step"] == 7

    progress.step, progress.tokens = 0, 0
    slot.rebuild()
    state.load_state_dict(saved)
    assert (progress.step, progress.tokens, progress.elapsed) == (7, 700, 1.5)
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        state.load_state_dict({"progress": saved["progress"]})


def test_a_micro_batch_with_no_counted_target_adds_zero_loss_and_the_step_stays_finite():
    from hamner import HamnerConfig, HamnerModel

    torch.manual_seed(0)
    model = HamnerModel(HamnerConfig(vocab_size=97, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                     intermediate_size=48, max_seq_len=16))
    idx = torch.randint(0, 97, (2, 8))
    targets = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        counted = float(model(idx, targets))
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, [(idx, targets), (idx, torch.full_like(targets, -100))],
                        torch.optim.SGD(model.parameters(), lr=0.1))
    assert bool(result.finite)
    assert float(result.loss) == pytest.approx(counted / 2)  # the empty micro-batch contributes 0
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
