"""Checkpoints: safetensors weights beside the trainer state, an atomic `latest`, retention, and
one-line errors for missing, truncated or foreign checkpoints."""
import json

import pytest
import torch

from hamner.model.config import model_config
from hamner.model.transformer import HamnerModel
from hamner.run import checkpoint as ckpt
from hamner.use.load import load_model


@pytest.fixture
def model() -> HamnerModel:
    torch.manual_seed(0)
    return HamnerModel(model_config("demo"))


def meta(model: HamnerModel, step: int = 1) -> dict:
    return {"model": model.config.to_dict(), "curriculum": "demo", "step": step, "stage": 0}


def test_round_trip_from_run_dir_and_checkpoint_dir(tmp_path, model):
    state = {"step": 5, "rng": torch.get_rng_state()}
    written = ckpt.save_checkpoint(tmp_path, [ckpt.step_name(5)], model, meta(model, 5), state)
    assert written == tmp_path / "checkpoints" / "step-00000005"
    assert sorted(p.name for p in written.iterdir()) == ["config.json", "model.safetensors", "trainer.pt"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000005"
    for path in (tmp_path, written, written / "model.safetensors"):
        loaded, config = load_model(path)
        assert config == model.config
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
    assert ckpt.load_trainer_state(written)["step"] == 5


def test_latest_moves_and_periodic_ones_are_pruned(tmp_path, model):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, [ckpt.step_name(step)], model, meta(model, step), {"step": step})
        ckpt.prune_periodic(tmp_path, keep=2)
    ckpt.save_checkpoint(tmp_path, [ckpt.stage_end_name(0)], model, meta(model, 40), {"step": 40})
    ckpt.save_checkpoint(tmp_path, [ckpt.BEST], model, meta(model, 40), None, make_latest=False)
    ckpt.prune_periodic(tmp_path, keep=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best", "latest", "stage-0-end", "step-00000040"]
    assert ckpt.resolve_checkpoint(tmp_path).name == "stage-0-end"
    assert not (tmp_path / "checkpoints" / "best" / "trainer.pt").exists()


def test_one_checkpoint_under_two_names_shares_its_files(tmp_path, model):
    first = ckpt.save_checkpoint(tmp_path, [ckpt.stage_end_name(1), ckpt.step_name(7)], model, meta(model), {"s": 1})
    second = tmp_path / "checkpoints" / "step-00000007"
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert ckpt.resolve_checkpoint(tmp_path) == first


def test_an_unfinished_write_never_becomes_latest(tmp_path, model):
    ckpt.save_checkpoint(tmp_path, [ckpt.step_name(1)], model, meta(model), {"step": 1})
    # What a crash in the middle of the next save leaves behind: a temporary directory.
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000002-999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    assert ckpt.resolve_checkpoint(tmp_path).name == "step-00000001"
    load_model(tmp_path)


@pytest.mark.parametrize("damage", ["truncate_weights", "foreign_config", "no_latest", "missing_path",
                                    "plain_dir", "truncate_trainer"])
def test_damaged_or_foreign_checkpoints_give_one_line_errors(tmp_path, model, damage):
    run = tmp_path / "run"
    written = ckpt.save_checkpoint(run, [ckpt.step_name(1)], model, meta(model), {"step": 1})
    target = run
    if damage == "truncate_weights":
        data = (written / "model.safetensors").read_bytes()
        (written / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "foreign_config":
        (written / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    elif damage == "no_latest":
        (run / "checkpoints" / "latest").unlink()
    elif damage == "missing_path":
        target = tmp_path / "nowhere"
    elif damage == "plain_dir":
        target = tmp_path / "plain"
        target.mkdir()
    elif damage == "truncate_trainer":
        data = (written / "trainer.pt").read_bytes()
        (written / "trainer.pt").write_bytes(data[:20])
        with pytest.raises(ckpt.CheckpointError) as info:
            ckpt.load_trainer_state(written)
        assert "\n" not in str(info.value) and "trainer.pt" in str(info.value)
        return
    with pytest.raises(ckpt.CheckpointError) as info:
        load_model(target)
    assert "\n" not in str(info.value)


def test_weights_of_another_shape_are_refused(tmp_path, model):
    written = ckpt.save_checkpoint(tmp_path, [ckpt.step_name(1)], model, meta(model), None)
    other = HamnerModel(model_config("demo").__class__(**{**model.config.to_dict(), "n_layers": 2}))
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        ckpt.load_weights(other, written)


def test_a_step_is_never_saved_twice_and_latest_is_never_replaced(tmp_path, model):
    first = ckpt.save_checkpoint(tmp_path, [ckpt.step_name(5)], model, meta(model, 5), {"step": 5})
    inode = (first / "model.safetensors").stat().st_ino
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    again = ckpt.save_checkpoint(tmp_path, [ckpt.step_name(5)], model, meta(model, 5), {"step": 5})
    assert again == first and (first / "model.safetensors").stat().st_ino == inode  # kept as it was
    with pytest.raises(ckpt.CheckpointError, match="refusing to replace"):
        ckpt.save_checkpoint(tmp_path, [ckpt.step_name(5)], model, meta(model, 6), {"step": 6})
    assert ckpt.resolve_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000005"]


def test_a_replaced_checkpoint_goes_through_a_backup_that_reopening_restores(tmp_path, model):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(tmp_path, [ckpt.step_name(1)], model, meta(model, 1), {"step": 1})
    ckpt.save_checkpoint(tmp_path, [ckpt.BEST], model, meta(model, 1), None, make_latest=False)
    ckpt.save_checkpoint(tmp_path, [ckpt.BEST], model, meta(model, 2), None, make_latest=False)
    assert ckpt.read_meta(root / "best")["step"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "step-00000001"]
    # A kill between the two renames of a replacement, and in the middle of a save and a prune:
    (root / "best").rename(root / ".old-best-123")
    (root / ".tmp-step-00000002-123").mkdir()
    (root / ".tmp-latest-123").write_text("step-00000002\n")
    (root / ".del-step-00000000-123").mkdir()
    cleared = ckpt.remove_temporaries(tmp_path)
    assert len(cleared) == 4
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "step-00000001"]
    assert ckpt.read_meta(root / "best")["step"] == 2


def test_a_failed_write_keeps_the_last_checkpoint_and_leaves_no_temporary(tmp_path, model, monkeypatch):
    ckpt.save_checkpoint(tmp_path, [ckpt.step_name(1)], model, meta(model, 1), {"step": 1})

    def full(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nmore")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.save_checkpoint(tmp_path, [ckpt.step_name(2)], model, meta(model, 2), {"step": 2})
    message = str(info.value)
    assert "\n" not in message and "step-00000002" in message and "(step-00000001) is kept" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000001"]
    assert ckpt.resolve_checkpoint(tmp_path).name == "step-00000001"


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, model):
    written = ckpt.save_checkpoint(tmp_path, [ckpt.step_name(1)], model, meta(model), None)
    wider = HamnerModel(model_config("demo").__class__(**{**model.config.to_dict(), "intermediate_size": 400}))
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_weights(wider, written)
    assert "tensor layers.0.mlp.gate_up.weight has shape (688, 128) in the checkpoint but (800, 128) in the model" \
        in str(info.value)
