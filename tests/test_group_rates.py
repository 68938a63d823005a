"""Per-group learning rates: the curriculum's `embed_lr` and `head_lr` give the token embedding and an untied
output head AdamW groups of their own, on the same schedule as the rest; absent, nothing changes."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from train_helpers import metrics, tiny_settings, write_curriculum

from hamner.errors import CurriculumError
from hamner.model.config import model_config
from hamner.model.transformer import HamnerModel
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import load_curriculum
from hamner.train.optim import apply_lr, build_optimizer, layer_param_groups
from hamner.train.settings import resume_settings
from hamner.train.trainer import train
from hamner.use.load import load_model

CPU = torch.device("cpu")
STAGE = '[[stages]]\nname = "{name}"\nweights = {{ synthetic = 1 }}\ndifficulty = 1\nsteps = 10\n{extra}\n'


def curriculum(tmp_path: Path, top: str, *stages: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('name = "c"\n' + top + "\n" + "".join(STAGE.format(name=f"s{i}", extra=extra)
                                                         for i, extra in enumerate(stages)))
    return path


def test_rates_resolve_like_muon_lr_and_stay_absent_when_unset(tmp_path):
    both = load_curriculum(curriculum(tmp_path, "base_lr = 1e-3\nembed_lr = 0.3\nhead_lr = 0.004",
                                      "lr_mult = 1", "lr_mult = 0.5", "lr_mult = 0.5\nembed_lr = 0.1"))
    assert [r for s in both.stages for r in (s.embed_lr, s.head_lr)] == pytest.approx(
        [0.3, 0.004, 0.15, 0.002, 0.1, 0.002])
    one = load_curriculum(curriculum(tmp_path, "", "lr = 1e-3", "lr = 5e-4\nembed_lr = 0.2"))
    assert [(s.embed_lr, s.head_lr) for s in one.stages] == [(1e-3, None), (0.2, None)]  # s0 keeps its lr
    plain = load_curriculum(curriculum(tmp_path, "", "lr = 1e-3"))
    assert (plain.stages[0].embed_lr, plain.stages[0].head_lr) == (None, None)
    scaled = both.with_first_lr(2e-3)
    assert [r for s in scaled.stages for r in (s.embed_lr, s.head_lr)] == pytest.approx(
        [0.6, 0.008, 0.3, 0.004, 0.2, 0.004])


@pytest.mark.parametrize("top, stage, message", [
    ("embed_lr = 0", "lr = 1e-3", r"embed_lr: must be > 0"),
    ("", "lr = 1e-3\nhead_lr = -1", r"stages\[0\]\.head_lr: must be > 0"),
    ("head_lr = true", "lr = 1e-3", r"head_lr: must be a finite number"),
])
def test_bad_rates_are_one_line_errors_naming_the_field(tmp_path, top, stage, message):
    with pytest.raises(CurriculumError, match=message):
        load_curriculum(curriculum(tmp_path, top, stage))


def test_the_rates_follow_the_stage_schedule(tmp_path):
    path = curriculum(tmp_path, 'embed_lr = 0.3\nhead_lr = 0.006\noptimizer = "muon"',
                      'lr = 3e-3\nwarmup_steps = 4\nschedule = "cosine"\nmin_lr_ratio = 0.1')
    ctrl = CurriculumController(load_curriculum(path))
    for _ in range(10):
        rates, factor = ctrl.rates(), ctrl.lr_factor()
        assert (rates.adamw, rates.embed, rates.head) == pytest.approx((3e-3 * factor, 0.3 * factor, 0.006 * factor))
        ctrl.step_done()
    assert CurriculumController(load_curriculum(curriculum(tmp_path, "", "lr = 1e-3"))).rates().embed is None


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_embedding_and_untied_head_get_groups_of_their_own(kind):
    torch.manual_seed(0)
    model = HamnerModel(replace(model_config("demo"), tie_embeddings=False, value_embeddings=1))
    optimizers = build_optimizer(model, 1e-3, CPU, kind=kind, muon_lr=0.02, embed_lr=0.3, head_lr=0.004)
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    apply_lr(optimizers, 5e-4, {1: 0.2}, muon_lr=0.01, embed_lr=0.15, head_lr=0.002)
    group_of = {id(p): g for o in optimizers for g in o.param_groups for p in g["params"]}
    assert len(group_of) == len(list(model.parameters()))
    assert group_of[id(model.embed.weight)]["params"] == [model.embed.weight]
    assert group_of[id(model.lm_head.weight)]["params"] == [model.lm_head.weight]
    table = model.value_embeds[0].weight  # a value embedding: the embedding's rate, in its no-decay group
    assert group_of[id(table)]["params"] == [table] and group_of[id(table)]["weight_decay"] == 0.0
    for name, p in model.named_parameters():
        group = group_of[id(p)]
        hidden = kind == "muon" and name.startswith("layers.") and p.dim() == 2
        rates = {"embed.weight": 0.15, "value_embeds.0.weight": 0.15, "lm_head.weight": 0.002}
        expected = rates.get(name, 0.01 if hidden else 5e-4)
        scale = 0.2 if name.startswith("layers.1.") else 1.0
        assert group["lr"] == pytest.approx(expected * scale), name
        assert group.get("optimizer", "adamw") == ("muon" if hidden else "adamw"), name
    assert group_of[id(model.lm_head.weight)]["weight_decay"] == group_of[id(model.embed.weight)]["weight_decay"]


def test_without_the_rates_the_groups_are_todays():
    torch.manual_seed(0)
    model = HamnerModel(model_config("demo"))
    optimizer = build_optimizer(model, 1e-3, CPU)
    expected = layer_param_groups(model)
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == \
        [[id(p) for p in g["params"]] for g in expected]
    assert not any("role" in g for g in optimizer.param_groups)
    # A tied model has no head of its own: head_lr alone splits nothing off.
    assert len(build_optimizer(model, 1e-3, CPU, head_lr=0.1).param_groups) == len(expected)


def test_training_a_tied_model_with_head_lr_is_refused_in_one_line(tmp_path):
    path = curriculum(tmp_path, 'tokenizer = "bytes"\nhead_lr = 0.01', "lr = 1e-3")
    with pytest.raises(CurriculumError, match="head_lr: the model ties its output head to the embedding"):
        train(tiny_settings(tmp_path / "run", path, max_steps=1))


def test_untied_muon_run_with_group_rates_resumes_exactly(tmp_path):
    path = write_curriculum(tmp_path, first=4, second=4, eval_interval=3)
    path.write_text(path.read_text().replace('tokenizer = "bytes"', 'tokenizer = "bytes"\nembed_lr = 0.05\n'
                                             'head_lr = 0.002\noptimizer = "muon"'))
    model_file = tmp_path / "model.toml"
    model_file.write_text("tie_embeddings = false\nlogit_softcap = 15.0\n")
    run = dict(model=str(model_file), grad_accum=2)
    train(tiny_settings(tmp_path / "whole", path, max_steps=8, **run))
    train(tiny_settings(tmp_path / "parts", path, max_steps=6, **run))  # resumes inside stage 1
    assert train(resume_settings(tmp_path / "parts", {"max_steps": 8})).step == 8
    expected = [(r["step"], r["loss"], r["val_loss"], r["lr"]) for r in metrics(tmp_path / "whole")]
    assert [(r["step"], r["loss"], r["val_loss"], r["lr"]) for r in metrics(tmp_path / "parts")] == expected
    a, config = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    assert not config.tie_embeddings and a.lm_head.weight.any()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
