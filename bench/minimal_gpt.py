"""A minimal plain-PyTorch GPT (nanoGPT-style) for the throughput comparison.

Learned positions, LayerNorm, multi-head causal attention through SDPA, a GELU MLP of 4x width and
an output head tied to the embedding, no biases: the smallest thing a user would write by hand.
Sized from a HamnerConfig (same width, depth, heads and vocabulary), so its parameter count is
within a few percent of Hamner's at the same preset.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hamner.model.config import HamnerConfig


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width, bias=False)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class MinimalGPT(nn.Module):
    """`forward(idx, targets)` returns the mean cross-entropy, like HamnerModel."""

    def __init__(self, config: HamnerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.blocks = nn.ModuleList(_Block(config.hidden_size, config.n_heads) for _ in range(config.n_layers))
        self.ln = nn.LayerNorm(config.hidden_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=config.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln(x) @ self.embed.weight.T
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
