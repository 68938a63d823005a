"""The optimizer: Muon takes the hidden matrices and AdamW the rest, as a list the loop steps and
checkpoints together; the non-finite skip leaves Muon's weights and momentum untouched with or
without a host read."""
from dataclasses import replace

import pytest
import torch

from hamner.errors import CheckpointError
from hamner.model.config import model_config
from hamner.model.transformer import HamnerModel
from hamner.train.optim import apply_lr, build_optimizer, step_if_finite
from hamner.train.state import OptimizerSlot

CPU = torch.device("cpu")


def muon_model() -> tuple[HamnerModel, list[torch.optim.Optimizer]]:
    torch.manual_seed(0)
    model = HamnerModel(model_config("demo"))
    return model, build_optimizer(model, 1e-3, CPU, kind="muon", muon_lr=0.02)


def step_all(optimizers: list[torch.optim.Optimizer], finite: torch.Tensor, sync_free: bool) -> None:
    for optimizer in optimizers:
        step_if_finite(optimizer, finite, sync_free=sync_free)


def fake_grads(model: torch.nn.Module, value: float = 1.0) -> None:
    for p in model.parameters():
        p.grad = torch.full_like(p, value) + torch.randn_like(p)


def test_muon_takes_hidden_matrices_and_adamw_the_rest_with_their_own_rates_and_layer_scales():
    model, optimizer = muon_model()
    apply_lr(optimizer, 1e-3, {1: 0.2}, muon_lr=0.02)
    group_of = {id(p): g for part in optimizer for g in part.param_groups for p in g["params"]}
    assert len(group_of) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        group = group_of[id(p)]
        hidden = name.startswith("layers.") and p.dim() == 2
        assert group["optimizer"] == ("muon" if hidden else "adamw"), name
        scale = 0.2 if name.startswith("layers.1.") else 1.0
        assert group["lr"] == pytest.approx((0.02 if hidden else 1e-3) * scale), name
    assert isinstance(optimizer[1], torch.optim.Muon)
    assert group_of[id(model.embed.weight)]["weight_decay"] == 0.1


@pytest.mark.parametrize("sync_free", [False, True])
def test_non_finite_step_leaves_muon_weights_and_momentum_alone(sync_free):
    model, optimizer = muon_model()
    fake_grads(model)
    step_all(optimizer, torch.tensor(True), sync_free)  # momentum buffers now exist
    muon = optimizer[1]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {id(p): s["momentum_buffer"].clone() for p, s in muon.state.items()}
    fake_grads(model, float("nan"))
    step_all(optimizer, torch.tensor(False), sync_free)
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
    for p, state in muon.state.items():
        assert torch.equal(state["momentum_buffer"], buffers[id(p)])
    fake_grads(model)
    step_all(optimizer, torch.tensor(True), sync_free)
    assert all(not torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_muon_state_round_trips_and_refuses_another_kind():
    model, optimizer = muon_model()
    fake_grads(model)
    for part in optimizer:
        part.step()
    slot = OptimizerSlot(lambda: optimizer)
    state = slot.state_dict()
    assert isinstance(state, list) and len(state) == 2
    fresh = OptimizerSlot(lambda: muon_model()[1])
    fresh.load_state_dict(state)
    assert fresh.optimizers[0].defaults["foreach"] and fresh.optimizers[0].param_groups[0]["foreach"]
    assert torch.equal(fresh.optimizers[1].state_dict()["state"][0]["momentum_buffer"],
                       state[1]["state"][0]["momentum_buffer"])
    with pytest.raises(CheckpointError, match="saved state holds"):
        fresh.load_state_dict(build_optimizer(model, 1e-3, CPU).state_dict())


def test_moe_expert_weights_stay_on_adamw_and_a_muon_step_runs():
    torch.manual_seed(0)
    model = HamnerModel(replace(model_config("demo"), mlp="moe", n_experts=4, moe_intermediate_size=32))
    adamw, muon = build_optimizer(model, 1e-3, CPU, kind="muon")
    on_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    experts = [p for p in model.parameters() if p.dim() == 3]
    assert experts and not any(id(p) in on_muon for p in experts)
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    fake_grads(model)
    before = [p.detach().clone() for p in experts]
    step_all([adamw, muon], torch.tensor(True), sync_free=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, experts))


def test_layered_adamw_steps_groups_with_equal_hyperparameters_in_one_call(monkeypatch):
    """Layers at one rate are updated by one multi-tensor call; a scaled layer keeps its own call and
    rate; the parameters come out bit for bit as torch's AdamW leaves them, and the groups the
    checkpoint sees are the per-layer ones."""
    import torch.optim.adam as adam_module

    def models_and_optimizers():
        torch.manual_seed(0)
        model = HamnerModel(model_config("demo"))
        return model, build_optimizer(model, 1e-2, CPU)

    model, ours = models_and_optimizers()
    twin, _ = models_and_optimizers()
    plain = torch.optim.AdamW([{**g, "params": [dict(twin.named_parameters())[n] for n in names]}
                               for g, names in _group_names(model, ours)], lr=1e-2, betas=(0.9, 0.95), foreach=True)
    calls = []
    real_adam = adam_module.adam
    monkeypatch.setattr(adam_module, "adam", lambda *a, **k: calls.append(k["lr"]) or real_adam(*a, **k))
    for step in range(3):
        for optimizer, m in ((ours, model), (plain, twin)):
            apply_lr(optimizer, 1e-2, {1: 0.2})
            torch.manual_seed(step)
            fake_grads(m)
            optimizer.step()
    groups = len(ours.param_groups)
    # ours: decay and no-decay, each at the base rate and at layer 1's
    assert groups > 4 and len(calls) == 3 * (4 + groups)
    assert sorted(set(calls)) == [pytest.approx(2e-3), pytest.approx(1e-2)]
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
    assert len(ours.state_dict()["param_groups"]) == groups


def _group_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[dict, list[str]]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [({k: v for k, v in g.items() if k != "params"}, [name_of[id(p)] for p in g["params"]])
            for g in optimizer.param_groups]
