"""Mixture-of-experts MLP: a softmax router picks the top-k of E SwiGLU experts per token.

    p = softmax(W_r x),  S = top-k(p),  y = sum_{e in S} (p_e / sum_{e' in S} p_e') SwiGLU_e(x)   (k >= 2)
    y = p_e SwiGLU_e(x),  e = argmax p                                                        (k = 1)

(Shazeer et al. 2017, "Outrageously Large Neural Networks"; top-k renormalised as in Mixtral.) With
one expert per token the weight stays the router probability, as in the Switch Transformer: renormalised
it would be p_e / p_e = 1, and the language-model loss would send the router no gradient.
Training adds two auxiliary losses: the Switch Transformer load-balancing loss
E * sum_e f_e P_e (Fedus et al. 2021; f_e the fraction of assignments routed to expert e, P_e its
mean router probability; 1 when balanced) and the router z-loss mean(logsumexp(W_r x)^2)
(Zoph et al. 2022, "ST-MoE"), weighted by `moe_balance_weight` and `moe_z_weight`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from hamner import kernels
from hamner.model.mlps.settings import MoESettings

if TYPE_CHECKING:
    from hamner.model.config import HamnerConfig


def expert_fraction(expert_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Float32 [E]: the fraction of the token assignments `expert_ids` [N, k] that went to each expert."""
    flat = expert_ids.reshape(-1)
    counts = torch.zeros(n_experts, device=flat.device).index_add_(0, flat, torch.ones(flat.shape, device=flat.device))
    return counts / flat.numel()


def balance_loss(probs: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Switch load-balancing loss E * sum_e f_e P_e for router probabilities [N, E] and expert fractions f [E]."""
    return probs.shape[-1] * (fraction * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss: mean over tokens of logsumexp(logits)^2, which keeps router logits small."""
    return logits.logsumexp(-1).pow(2).mean()


class MoE(MoESettings, nn.Module):
    """`router` [E, C], and per-expert `gate_up` [E, 2I, C] and `down` [E, C, I] in nn.Linear layout."""

    def __init__(self, config: HamnerConfig, layer_index: int) -> None:
        super().__init__()
        self.config = config
        self.top_k = config.moe_top_k
        width = config.moe_intermediate_size or config.intermediate_size
        self.router = nn.Linear(config.hidden_size, config.n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(config.n_experts, 2 * width, config.hidden_size))
        self.down = nn.Parameter(torch.empty(config.n_experts, config.hidden_size, width))
        self.aux_loss: torch.Tensor | None = None
        # Fraction of this layer's token assignments each expert got in the last forward.
        self.load = torch.zeros(config.n_experts)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Experts like the dense MLP: N(0, init_std), `down` with the residual-scaled std (zero when the
        config's `zero_init_outputs`)."""
        nn.init.normal_(self.gate_up, mean=0.0, std=self.config.init_std)
        if self.config.zero_init_outputs:
            nn.init.zeros_(self.down)
        else:
            nn.init.normal_(self.down, mean=0.0, std=self.config.residual_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits = self.router(flat).float()
        probs = logits.softmax(-1)
        weights, expert_ids = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:  # k = 1 keeps p_e, so the router learns from the language-model loss (Switch)
            weights = weights / weights.sum(-1, keepdim=True)
        y = kernels.moe_experts(flat, expert_ids, weights, self.gate_up, self.down)
        fraction = expert_fraction(expert_ids, probs.shape[-1])
        self.load = fraction.detach()
        self.aux_loss = None
        if self.training:
            c = self.config
            self.aux_loss = c.moe_balance_weight * balance_loss(probs, fraction) + c.moe_z_weight * z_loss(logits)
        return y.view(x.shape)

    def num_active_parameters(self) -> int:
        """Parameters one token uses: the router and top-k of the experts."""
        expert = (self.gate_up.numel() + self.down.numel()) // self.gate_up.shape[0]
        return self.router.weight.numel() + self.top_k * expert
