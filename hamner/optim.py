"""AdamW for the training loop: parameter groups per layer and the learning rate applied to them.

Weight decay follows the model's own split (`model.param_groups`: matrices decay, norms and the like
do not). Each of those groups is further split by transformer layer so a curriculum can scale the
learning rate of chosen layers only (e.g. the middle "emotional" layers at 0.2x); parameters outside
`model.layers` (embeddings, final norm, head) always take the base rate.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

BETAS: tuple[float, float] = (0.9, 0.95)
WEIGHT_DECAY: float = 0.1


def layer_param_groups(model: torch.nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """The model's decay / no-decay groups split by layer; each group carries a `layer` key (None outside layers)."""
    layer_of = {id(p): i for i, layer in enumerate(model.layers) for p in layer.parameters()}
    groups: list[dict] = []
    for base in model.param_groups(weight_decay):
        by_layer: dict[int | None, list[torch.nn.Parameter]] = {}
        for p in base["params"]:
            if p.requires_grad:
                by_layer.setdefault(layer_of.get(id(p)), []).append(p)
        for layer, params in by_layer.items():
            groups.append({"params": params, "weight_decay": base.get("weight_decay", 0.0), "layer": layer})
    return groups


def build_optimizer(model: torch.nn.Module, lr: float, device: torch.device,
                    weight_decay: float = WEIGHT_DECAY) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95): the fused kernel on CUDA, the multi-tensor (foreach) one elsewhere."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(layer_param_groups(model, weight_decay), lr=lr, betas=BETAS,
                             fused=fused, foreach=not fused)


def step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """Apply the update only when the bool tensor `finite` is true.

    A fused optimizer gets the flag as `found_inf`, the input GradScaler uses: the kernel skips the
    update and its step count on the device, so the host never waits for the GPU. Others read the
    flag on the host, which costs nothing on a CPU."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


def apply_lr(optimizer: torch.optim.Optimizer, lr: float,
             layer_scales: Mapping[int, float] | Sequence[float] | None = None) -> None:
    """Set every group's rate to `lr`, times the scale of its layer when the curriculum gives one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * _scale(layer_scales, group.get("layer"))


def _scale(layer_scales: Mapping[int, float] | Sequence[float] | None, layer: int | None) -> float:
    if layer_scales is None or layer is None:
        return 1.0
    if isinstance(layer_scales, Mapping):
        return float(layer_scales.get(layer, 1.0))
    return float(layer_scales[layer]) if layer < len(layer_scales) else 1.0
