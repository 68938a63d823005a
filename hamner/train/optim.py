"""The training loop's optimizer: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Weight decay follows the model's own split (`model.param_groups`: matrices decay, norms and the like
do not). Each of those groups is further split by transformer layer so a curriculum can scale the
learning rate of chosen layers only (e.g. the middle "emotional" layers at 0.2x); parameters outside
`model.layers` (embeddings, final norm, head) take the base rate, except that a curriculum's `embed_lr`
and `head_lr` put the token embedding (with the value embeddings) and an untied output head
(`model.lm_head`) in groups of their own (labelled by `role`) at those rates (the speedrun's per-group
rates).

With "muon", the 2-D weights inside `model.layers` (attention and MLP projections) go to
`torch.optim.Muon` (momentum 0.95, Nesterov, 5 Newton-Schulz steps, Keller Jordan's LR adjustment
sqrt(max(1, rows/cols)), no weight decay); the embedding (also the tied output head), an untied head,
the value embeddings (lookup tables outside the layers), norms and any other parameter stay on AdamW, as
do MoE expert weights (3-D [experts, out, in]). The loop gets the
two as a list [AdamW, Muon]; `hamner.train.step.train_step` steps, skips, clips and zeroes them together and
`hamner.train.state.OptimizerSlot` checkpoints them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from hamner.errors import TrainError
from hamner.train.curriculum.spec import DEFAULT_MUON_LR, OPTIMIZERS, Stage

BETAS: tuple[float, float] = (0.9, 0.95)
WEIGHT_DECAY: float = 0.1
MUON_MOMENTUM: float = 0.95
# Muon's decoupled decay is lr * wd per step; at Muon's ~20x larger rate AdamW's 0.1 would shrink
# the matrices ~20x faster, so Muon runs without it (as the speedrun records did).
MUON_WEIGHT_DECAY: float = 0.0
# One optimizer, or several over disjoint parameters that are stepped together.
Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]
# Group keys that only label a group (for `apply_lr`), not hyperparameters of the update.
_LABELS = ("params", "layer", "optimizer", "role")


class LayeredAdamW(torch.optim.AdamW):
    """AdamW over per-layer groups that steps the groups with equal hyperparameters as one.

    The loop splits its groups by layer so a curriculum can scale chosen layers' rates, but
    `torch.optim.AdamW` makes one multi-tensor (or fused) call per group: on a CPU with a small model
    the extra calls cost more than the update itself (about 1.5 % of the demo step for 10 groups).
    During `step` the groups that share every hyperparameter (usually all layers at one rate) are
    merged; parameters, per-parameter state, `param_groups`, `state_dict` and hooks are unchanged.
    """

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        groups = self.param_groups
        merged: dict[tuple, dict] = {}
        try:
            for group in groups:
                key = tuple(sorted((k, v) for k, v in group.items() if k not in _LABELS))
                if key in merged:
                    merged[key]["params"] = [*merged[key]["params"], *group["params"]]
                else:
                    merged[key] = dict(group)
        except TypeError:  # an unhashable hyperparameter (a tensor rate): step group by group
            return super().step(closure)
        self.param_groups = list(merged.values())
        try:
            return super().step(closure)
        finally:
            self.param_groups = groups


def layer_param_groups(model: torch.nn.Module, weight_decay: float = WEIGHT_DECAY,
                       params: set[int] | None = None, roles: Mapping[int, str] | None = None) -> list[dict]:
    """The model's decay / no-decay groups split by layer; each group carries a `layer` key (None outside
    layers). `params` (ids) keeps only those parameters; `roles` (id -> role) puts those parameters in
    groups of their own, with a `role` key and layer None."""
    layer_of = {id(p): i for i, layer in enumerate(model.layers) for p in layer.parameters()}
    roles = roles or {}
    groups: list[dict] = []
    for base in model.param_groups(weight_decay):
        by_key: dict[tuple[str, int | str | None], list[torch.nn.Parameter]] = {}
        for p in base["params"]:
            if p.requires_grad and (params is None or id(p) in params):
                key = ("role", roles[id(p)]) if id(p) in roles else ("layer", layer_of.get(id(p)))
                by_key.setdefault(key, []).append(p)
        for (kind, value), group_params in by_key.items():
            group = {"params": group_params, "weight_decay": base.get("weight_decay", 0.0),
                     "layer": value if kind == "layer" else None}
            groups.append(group if kind == "layer" else {**group, "role": value})
    return groups


def rate_roles(model: torch.nn.Module, embed_lr: float | None, head_lr: float | None) -> dict[int, str]:
    """Parameter id -> role ("embed", "head") of the weights that get a rate of their own: the token
    embedding and any value-embedding tables when `embed_lr` is set (modded-nanogpt's embedding group), the
    untied output head when `head_lr` is (a tied head is the embedding)."""
    roles = {}
    if embed_lr is not None:
        tables = getattr(model, "value_embeds", ())
        roles.update({id(p): "embed" for p in [model.embed.weight, *(t.weight for t in tables)]})
    if head_lr is not None and getattr(model, "lm_head", None) is not None:
        roles[id(model.lm_head.weight)] = "head"
    return roles


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D trainable weights inside `model.layers`: the parameters Muon takes (3-D MoE expert
    weights stay on AdamW)."""
    return [p for layer in model.layers for p in layer.parameters() if p.requires_grad and p.dim() == 2]


def build_optimizer(model: torch.nn.Module, lr: float, device: torch.device, kind: str = "adamw",
                    muon_lr: float = DEFAULT_MUON_LR, weight_decay: float = WEIGHT_DECAY,
                    embed_lr: float | None = None, head_lr: float | None = None) -> Optimizers:
    """AdamW (betas 0.9/0.95; the fused kernel on CUDA, the multi-tensor one elsewhere), or for
    kind "muon" the list [that AdamW (everything else), Muon (hidden matrices)]. Every group carries
    an `optimizer` key ("adamw" / "muon") so `apply_lr` gives each its rate; with `embed_lr` / `head_lr`
    the embedding / untied head sit in AdamW groups of their own at those rates (`rate_roles`)."""
    if kind not in OPTIMIZERS:
        raise TrainError(f"unknown optimizer {kind!r}; choose one of {', '.join(OPTIMIZERS)}")
    fused = device.type == "cuda"
    roles = rate_roles(model, embed_lr, head_lr)
    if kind == "adamw":
        optimizer = LayeredAdamW(layer_param_groups(model, weight_decay, roles=roles), lr=lr, betas=BETAS,
                                 fused=fused, foreach=not fused)
        apply_lr(optimizer, lr, embed_lr=embed_lr, head_lr=head_lr)
        return optimizer
    matrices = hidden_matrices(model)
    muon_ids = {id(p) for p in matrices}
    rest = {id(p) for p in model.parameters()} - muon_ids
    layer_of = {id(p): i for i, layer in enumerate(model.layers) for p in layer.parameters()}
    by_layer: dict[int, list[torch.nn.Parameter]] = {}
    for p in matrices:
        by_layer.setdefault(layer_of[id(p)], []).append(p)
    muon = torch.optim.Muon([{"params": ps, "layer": layer, "optimizer": "muon"} for layer, ps in by_layer.items()],
                            lr=muon_lr,
                            weight_decay=MUON_WEIGHT_DECAY, momentum=MUON_MOMENTUM, nesterov=True)
    groups = [{**group, "optimizer": "adamw"} for group in layer_param_groups(model, weight_decay, rest, roles)]
    adamw = LayeredAdamW(groups, lr=lr, betas=BETAS, fused=fused, foreach=not fused)
    apply_lr(adamw, lr, embed_lr=embed_lr, head_lr=head_lr)
    return [adamw, muon]


def stage_optimizer(model: torch.nn.Module, stage: Stage, device: torch.device,
                    kind: str | None = None) -> Optimizers:
    """Fresh optimizer(s) for `stage`: of `kind` when given (--optimizer), else of the stage's own, at
    its peak rates (`apply_lr` sets the rates of every step)."""
    return build_optimizer(model, stage.lr, device, kind=kind or stage.optimizer, muon_lr=stage.muon_lr,
                           embed_lr=stage.embed_lr, head_lr=stage.head_lr)


def step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor, sync_free: bool | None = None) -> None:
    """Apply the update only when the bool tensor `finite` is true.

    A fused AdamW gets the flag as `found_inf`, the input GradScaler uses: the kernel skips the update
    and its step count on the device, so the host never waits for the GPU. Muon has no such input, so
    where a host read would stall a GPU (`sync_free`, default: off the CPU) it steps and then puts
    its parameters and momentum back with `torch.where` wherever the flag is false, costing a copy of
    its matrices per step instead of a sync. Everything else reads the flag on the host, which costs
    nothing on a CPU."""
    if sync_free is None:
        sync_free = finite.device.type != "cpu"
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif sync_free and isinstance(optimizer, torch.optim.Muon):
        _step_or_restore(optimizer, finite)
    elif bool(finite):
        optimizer.step()


@torch.no_grad()
def _step_or_restore(optimizer: torch.optim.Muon, finite: torch.Tensor) -> None:
    """Step, then restore each parameter and momentum buffer where `finite` is false (no host sync)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    old_params = [p.detach().clone() for p in params]
    old_buffers = [optimizer.state[p]["momentum_buffer"].clone() if "momentum_buffer" in optimizer.state[p]
                   else torch.zeros_like(p) for p in params]
    optimizer.step()
    for p, old, old_buffer in zip(params, old_params, old_buffers):
        p.copy_(torch.where(finite, p, old))
        buffer = optimizer.state[p]["momentum_buffer"]
        buffer.copy_(torch.where(finite, buffer, old_buffer))


def apply_lr(optimizers: Optimizers, lr: float,
             layer_scales: Mapping[int, float] | Sequence[float] | None = None,
             muon_lr: float | None = None, embed_lr: float | None = None, head_lr: float | None = None) -> None:
    """Set every group's rate to `lr` (Muon's groups to `muon_lr`, the embedding's and the head's groups
    to `embed_lr` and `head_lr` when they have groups of their own), times the scale of its layer when
    the curriculum gives one."""
    role_rates = {"embed": embed_lr, "head": head_lr}
    for optimizer in optimizers if isinstance(optimizers, Sequence) else [optimizers]:
        for group in optimizer.param_groups:
            if group.get("optimizer") == "muon" and muon_lr is not None:
                base = muon_lr
            elif role_rates.get(group.get("role")) is not None:
                base = role_rates[group["role"]]
            else:
                base = lr
            group["lr"] = base * _scale(layer_scales, group.get("layer"))


def _scale(layer_scales: Mapping[int, float] | Sequence[float] | None, layer: int | None) -> float:
    if layer_scales is None or layer is None:
        return 1.0
    if isinstance(layer_scales, Mapping):
        return float(layer_scales.get(layer, 1.0))
    return float(layer_scales[layer]) if layer < len(layer_scales) else 1.0
