"""TTT-Linear's inner loop in the dual form (Sun et al. 2024, "Learning to (Learn at Test Time)").

Per batch row and head, an inner model f(x) = x + LN(x W + b) (W [D, D], b [D], LN with a
learnable per-head weight and bias) is trained while reading: each token j has the loss
l_j(W, b) = 1/2 |LN(k_j W + b) - (v_j - k_j)|². Tokens are taken in mini-batches of K; every
token i of a mini-batch (position i = 0..K-1 in it) is read out with the weights after one
gradient step over the mini-batch's tokens up to itself, all gradients taken at the weights
W_0, b_0 the mini-batch started with:

    W_i = W_0 - s_i sum_{j <= i} lr_j k_jᵀ grad_j        b_i = b_0 - s_i sum_{j <= i} lr_j grad_j
    out_i = q_i + LN(q_i W_i + b_i)

where grad_j = dl_j/dZ at Z_j = k_j W_0 + b_0, lr_j is the token's inner learning rate and s_i
the position's scale (1/(i+1) plus a learnt offset in TTT-Linear). The mini-batch hands
W_{K-1}, b_{K-1} on to the next. The dual form never builds a per-token W_i:
q_i W_i = q_i W_0 - s_i sum_j lr_j (q_i·k_j) grad_j is a causal K x K product, as in attention.

A sequence need not be a whole number of mini-batches: the last, partial one is padded with
tokens of zero learning rate (they change nothing) and only complete mini-batches move the
returned weights, so a decoder can keep the partial mini-batch's tokens and finish it later
with exactly the same arithmetic. Plain PyTorch, compile-friendly (a Python loop over
mini-batches); `kernels.reference.ttt_linear` is the token-by-token primal form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_l2_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """d/dz of 1/2 |weight * normalize(z) + bias - target|² over the last dim (LayerNorm backward)."""
    mean = z.mean(-1, keepdim=True)
    std = (z.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    z_hat = (z - mean) / std
    d_hat = (weight * z_hat + bias - target) * weight
    d = z.shape[-1]
    return (d * d_hat - d_hat.sum(-1, keepdim=True) - z_hat * (d_hat * z_hat).sum(-1, keepdim=True)) / (d * std)


def _layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = z.mean(-1, keepdim=True)
    return weight * (z - mean) / (z.var(-1, keepdim=True, unbiased=False) + eps).sqrt() + bias


def ttt_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    token_scale: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dual form (module docstring); returns (out [B, T, H, D], W, b after the last complete mini-batch).

    q, k, v [B, T, H, D] start at a mini-batch boundary; lr [B, T, H]; token_scale [K] (its
    length is the mini-batch size); weight [B, H, D, D] and bias [B, H, D] are W_0, b_0;
    ln_weight, ln_bias [H, D]. Runs in the inputs' dtype.
    """
    B, T, H, D = q.shape
    K = token_scale.shape[0]
    n_full, pad = T // K, (-T) % K
    if pad:  # zero-lr tokens: no gradient reaches the weights, their outputs are dropped
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        lr = F.pad(lr, (0, 0, 0, pad))
    N = (T + pad) // K
    q, k, v = (t.transpose(1, 2).reshape(B, H, N, K, D) for t in (q, k, v))
    lr = lr.transpose(1, 2).reshape(B, H, N, 1, K)
    ln_w, ln_b = ln_weight[:, None, :], ln_bias[:, None, :]  # broadcast over [B, H, K, D]
    causal = torch.ones(K, K, dtype=torch.bool, device=q.device).tril()
    # eta[i, j] = s_i lr_j for j <= i: the step size token j's gradient takes in token i's weights.
    eta = (token_scale[:, None] * lr).masked_fill(~causal, 0.0)  # [B, H, N, K, K]
    b = bias[:, :, None, :]  # [B, H, 1, D]
    outs = []
    for n in range(N):
        qn, kn, vn, eta_n = q[:, :, n], k[:, :, n], v[:, :, n], eta[:, :, n]
        grad = layer_norm_l2_grad(kn @ weight + b, vn - kn, ln_w, ln_b, eps)  # [B, H, K, D]
        scores = (qn @ kn.transpose(-1, -2)) * eta_n
        z = qn @ weight + b - scores @ grad - eta_n @ grad
        outs.append(qn + _layer_norm(z, ln_w, ln_b, eps))
        if n < n_full:
            last = eta_n[:, :, -1, :, None]  # [B, H, K, 1]: s_{K-1} lr_j
            weight = weight - kn.transpose(-1, -2) @ (last * grad)
            b = b - (last * grad).sum(-2, keepdim=True)
    out = torch.stack(outs, dim=2).reshape(B, H, N * K, D)[:, :, :T].transpose(1, 2)
    return out, weight, b[:, :, 0, :]
