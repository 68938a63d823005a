"""--resume continues exactly: 2N steps in one run and N steps + resume + N steps give identical
losses and weights (model, optimizer, controller, sampler and RNG state all restored)."""
import pytest
import torch
from train_helpers import metrics, tiny_settings, write_curriculum

from hamner.checkpoint import load_model
from hamner.errors import TrainError
from hamner.train_settings import resume_settings
from hamner.trainer import train

TOTAL = 10


@pytest.mark.parametrize("split", [4, 5, 7])  # inside stage 0, at its end, inside the ramped stage 1
def test_resume_gives_identical_losses(tmp_path, split):
    curriculum = write_curriculum(tmp_path, first=5, second=8, eval_interval=3)
    whole = train(tiny_settings(tmp_path / "whole", curriculum, max_steps=TOTAL))
    first = train(tiny_settings(tmp_path / "parts", curriculum, max_steps=split))
    assert (whole.step, first.step, first.reason) == (TOTAL, split, "max_steps")
    rest = train(resume_settings(tmp_path / "parts", {"max_steps": TOTAL}))
    assert rest.step == TOTAL

    expected = [(r["step"], r["loss"], r["val_loss"]) for r in metrics(tmp_path / "whole")]
    got = [(r["step"], r["loss"], r["val_loss"]) for r in metrics(tmp_path / "parts")]
    assert len(expected) == TOTAL and got == expected
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path):
    curriculum = write_curriculum(tmp_path, first=2, second=2)
    train(tiny_settings(tmp_path / "run", curriculum))
    with pytest.raises(TrainError, match="batch-size cannot change"):
        resume_settings(tmp_path / "run", {"batch_size": 4})
    with pytest.raises(TrainError, match="already finished"):
        train(resume_settings(tmp_path / "run", {}))
    with pytest.raises(TrainError, match="no config.json"):
        resume_settings(tmp_path / "elsewhere", {})
