"""The optimizer: Muon takes the hidden matrices and AdamW the rest; one interface for both; the
non-finite skip leaves Muon's weights and momentum untouched with or without a host read."""
import pytest
import torch

from hamner.config import model_config
from hamner.model import HamnerModel
from hamner.optim import CombinedOptimizer, apply_lr, build_optimizer, load_state, step_if_finite

CPU = torch.device("cpu")


def muon_model() -> tuple[HamnerModel, CombinedOptimizer]:
    torch.manual_seed(0)
    model = HamnerModel(model_config("demo"))
    return model, build_optimizer(model, 1e-3, CPU, kind="muon", muon_lr=0.02)


def fake_grads(model: torch.nn.Module, value: float = 1.0) -> None:
    for p in model.parameters():
        p.grad = torch.full_like(p, value) + torch.randn_like(p)


def test_muon_takes_hidden_matrices_and_adamw_the_rest_with_their_own_rates_and_layer_scales():
    model, optimizer = muon_model()
    apply_lr(optimizer, 1e-3, {1: 0.2}, muon_lr=0.02)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        group = group_of[id(p)]
        hidden = name.startswith("layers.") and p.dim() == 2
        assert group["optimizer"] == ("muon" if hidden else "adamw"), name
        scale = 0.2 if name.startswith("layers.1.") else 1.0
        assert group["lr"] == pytest.approx((0.02 if hidden else 1e-3) * scale), name
    assert isinstance(optimizer.parts["muon"], torch.optim.Muon)
    assert group_of[id(model.embed.weight)]["weight_decay"] == 0.1


@pytest.mark.parametrize("sync_free", [False, True])
def test_non_finite_step_leaves_muon_weights_and_momentum_alone(sync_free):
    model, optimizer = muon_model()
    fake_grads(model)
    step_if_finite(optimizer, torch.tensor(True), sync_free=sync_free)  # momentum buffers now exist
    muon = optimizer.parts["muon"]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {id(p): s["momentum_buffer"].clone() for p, s in muon.state.items()}
    fake_grads(model, float("nan"))
    step_if_finite(optimizer, torch.tensor(False), sync_free=sync_free)
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
    for p, state in muon.state.items():
        assert torch.equal(state["momentum_buffer"], buffers[id(p)])
    fake_grads(model)
    step_if_finite(optimizer, torch.tensor(True), sync_free=sync_free)
    assert all(not torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_combined_state_round_trips_and_refuses_another_kind():
    model, optimizer = muon_model()
    fake_grads(model)
    optimizer.step()
    state = optimizer.state_dict()
    assert set(state) == {"adamw", "muon"}
    _, fresh = muon_model()
    load_state(fresh, state)
    assert fresh.parts["adamw"].defaults["foreach"] and fresh.param_groups[0]["foreach"]
    assert torch.equal(fresh.parts["muon"].state_dict()["state"][0]["momentum_buffer"],
                       state["muon"]["state"][0]["momentum_buffer"])
    with pytest.raises(ValueError, match="optimizer state holds"):
        fresh.load_state_dict(build_optimizer(model, 1e-3, CPU).state_dict())
