"""Plain PyTorch versions of every op in `kernels`, with the same signatures.

They are the ground truth for the kernel tests (run them in float64) and the path CPU tensors
take outside the Triton interpreter. Math is done in at least float32 and cast back, as the
kernels do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """x in its compute dtype (at least float32); x itself when it already is, without an op call."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(_compute_dtype(x.dtype))


class _RMSNorm(torch.autograd.Function):
    """RMSNorm, optionally after a residual add, with its backward written out.

    y = w * xhat, xhat = s * r, r = rsqrt(mean(s^2) + eps), s = x (+ residual). The backward is
    ds = r * (dxhat - xhat * mean(dxhat * xhat)) with dxhat = dy * w, dw = sum over rows of dy * xhat.
    RMSNorm is LayerNorm with the mean held at zero, so LayerNorm's fused backward given mean 0 and
    rstd r computes all of it but one term: LayerNorm also subtracts r * mean(dxhat), which is added
    back. On a CPU that is one fused pass instead of six, and the forward saves only s (the residual
    stream, kept anyway) and r.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
        summed = x if residual is None else x + residual
        sf = _upcast(summed)
        width = sf.shape[-1]
        r = torch.linalg.vector_norm(sf, dim=-1, keepdim=True).square_().div_(width).add_(eps).rsqrt_()
        ctx.save_for_backward(summed, r, weight)
        ctx.has_residual = residual is not None
        out = (sf * r).mul_(weight).to(x.dtype)
        return (out, summed) if residual is not None else out

    @staticmethod
    def backward(ctx, dy: torch.Tensor, *dsummed: torch.Tensor | None):
        summed, r, weight = ctx.saved_tensors
        sf, dyf, weight_f = _upcast(summed), _upcast(dy), _upcast(weight)
        width = sf.shape[-1]
        dx, dweight, _ = torch.ops.aten.native_layer_norm_backward(
            dyf, sf, [width], torch.zeros_like(r), r, weight_f, None, [True, True, False])
        dx.add_((dyf @ weight_f).unsqueeze(-1).mul_(r).div_(width))  # + r * mean(dy * w), one value a row
        if dsummed and dsummed[0] is not None:
            dx.add_(dsummed[0])
        dx = dx.to(summed.dtype)
        return dx, (dx if ctx.has_residual else None), dweight.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Llama RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), normalised in fp32, output in x's dtype."""
    return _RMSNorm.apply(x, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add followed by RMSNorm; returns (normed, summed)."""
    return _RMSNorm.apply(x, residual, weight, eps)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up on the two halves of one tensor, whose backward writes both halves' gradients
    into one tensor: the fused gate/up projection gets its gradient without a concatenation, and
    the gate's half is computed in place (dy * up, then silu's derivative) without a temporary.
    Keeps silu(gate) for the backward, as autograd would, rather than recomputing it."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = _upcast(gate_up).chunk(2, dim=-1)
        silu = F.silu(gate)
        ctx.save_for_backward(gate_up, silu)
        return (silu * up).to(gate_up.dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        gate_up, silu = ctx.saved_tensors
        gate, up = _upcast(gate_up).chunk(2, dim=-1)
        dyf = _upcast(dy)
        if torch.compiler.is_compiling():  # Dynamo cannot trace out= into views; the compiler fuses the cat
            dgate_up = torch.cat((torch.ops.aten.silu_backward(dyf * up, gate), dyf * silu), dim=-1)
        else:
            dgate_up = torch.empty(gate_up.shape, dtype=silu.dtype, device=gate_up.device)
            dgate, dup = dgate_up.chunk(2, dim=-1)
            torch.mul(dyf, silu, out=dup)
            torch.mul(dyf, up, out=dgate)
            torch.ops.aten.silu_backward.grad_input(dgate, gate, grad_input=dgate)
        return dgate_up.to(gate_up.dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate, up the first and second half of the last dim of `gate_up` (one
    fused projection's output); math in fp32, output in gate_up's dtype."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"swiglu needs an even last dimension (gate and up halves), got {gate_up.shape[-1]}")
    return _SwiGLU.apply(gate_up)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2 elementwise, in fp32, output in x's dtype (the ReLU² MLP's activation)."""
    return torch.relu(_upcast(x)).square().to(x.dtype)


def gelu(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ("tanh", GPT-2's) or x Phi(x) ("none").

    torch's own op is already one elementwise kernel on every device, computing half types in float32, so
    `kernels.gelu` is this on every path (no Triton twin to check against)."""
    return F.gelu(x, approximate=approximate)


def rope_cache(
    seq_len: int, head_dim: int, theta: float = 10000.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [seq_len, head_dim // 2] float32; angle[t, i] = t * theta^(-2i/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)
    return angles.cos().float(), angles.sin().float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x rotated by the angles of its positions: halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).

    As x * [cos, cos] + swap(x) * [-sin, sin] on x viewed as [..., 2, D/2]: three passes over x.
    """
    compute = _compute_dtype(x.dtype)
    halves = x.to(compute).unflatten(-1, (2, -1))  # [B, T, H, 2, D/2]
    cos = cos[: x.shape[1]].to(compute)
    sin = sin[: x.shape[1]].to(compute)
    signed_sin = torch.stack((-sin, sin), dim=-2)[None, :, None]  # [1, T, 1, 2, D/2]
    out = halves * cos[None, :, None, None, :]
    out.addcmul_(halves.flip(-2), signed_sin)
    return out.flatten(-2).to(x.dtype)


def _rotate_pairs(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] with adjacent pairs (x[2i], x[2i+1]) as complex numbers, times `turns`
    [T, >= H, D/2] (exp(i angle) for every head): one pass."""
    xf = _upcast(x)
    if xf.stride(-1) != 1 or any(stride % 2 for stride in xf.stride()[:-1]):
        xf = xf.contiguous()
    rotated = torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * turns[:, : x.shape[2]]
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


class _Rope(torch.autograd.Function):
    """RoPE with its own backward: the gradient of a rotation is the inverse rotation (sin negated).
    Written out so a CPU step does no concatenation and no zero-filled gradients of slices.

    With interleaved pairs the angles become one complex table [T, H, D/2] per call, spread over the
    heads: the multiply then runs over whole contiguous rows (broadcast over a short inner dimension
    it is several times slower on a CPU), and the backward reuses the table, conjugated."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool):
        ctx.interleaved = interleaved
        if interleaved:
            T, heads = q.shape[1], max(q.shape[2], k.shape[2])
            cos, sin = (_upcast(t[:T]).unsqueeze(-2).expand(-1, heads, -1) for t in (cos, sin))
            turns = torch.complex(cos, sin)
            ctx.save_for_backward(turns)
            return _rotate_pairs(q, turns), _rotate_pairs(k, turns)
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
        if ctx.interleaved:
            turns = torch.conj_physical(ctx.saved_tensors[0])
            return _rotate_pairs(dq, turns), _rotate_pairs(dk, turns), None, None, None
        cos, sin = ctx.saved_tensors
        return _rotate(dq, cos, -sin), _rotate(dk, cos, -sin), None, None, None


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding on q [B, T, Hq, D] and k [B, T, Hkv, D]: element i pairs with i + D/2
    (rotate-half, as Llama), or with `interleaved` element 2i with 2i + 1 (as GPT-J)."""
    return _Rope.apply(q, k, cos, sin, interleaved)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap · tanh(logits / cap): logits squashed smoothly into (-cap, cap) (Gemma 2's final-logit
    soft-capping, used by the nanoGPT speedrun); `logits` itself when `cap` is None."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, *,
    chunk_bytes: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of hidden @ weight.T (soft-capped at `softcap` when given, see `soft_cap`)
    against targets over non-ignored rows (logits materialised).

    `chunk_bytes` sizes the Triton kernel's logit chunks; here every logit is materialised at once, so
    it is accepted (callers need not know which op runs) and ignored.
    """
    logits = soft_cap(_upcast(hidden @ weight.T), softcap)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def causal_mask(n_queries: int, n_keys: int, window: int | torch.Tensor | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [n_queries, n_keys], True where a query may see a key.

    Queries are the last n_queries positions of the keys: query j sits at n_keys - n_queries + j
    and sees the keys at or before it, and with `window` only the last `window` of those. A window
    given as a 0-d integer tensor (one set at run time) is compared on the device, so the mask is
    built without reading it back and a compiled graph takes it as an input.
    """
    offset = n_keys - n_queries
    if isinstance(window, torch.Tensor):
        query = torch.arange(offset, n_keys, device=device)[:, None]
        key = torch.arange(n_keys, device=device)[None, :]
        return (key <= query) & (query - key < window.to(device))
    mask = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=offset)
    if window is not None:
        mask = mask.triu(diagonal=offset - window + 1)
    return mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    window: int | torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Grouped-query softmax attention on [B, T, H, D] tensors; query head i reads KV head i // (Hq // Hkv).

    With `window` (causal only; an int or a 0-d tensor), each query sees just the last `window` keys up to itself.
    `segment_ids` [B, T]: a query sees only keys with its own id (documents packed in one row).
    """
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.repeat_interleave(group, dim=2).transpose(1, 2)
    vh = v.repeat_interleave(group, dim=2).transpose(1, 2)
    scores = _upcast(qh @ kh.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        # Queries are the last tq positions of the tk keys (matters for cached decoding).
        mask = causal_mask(scores.shape[-2], scores.shape[-1], window, device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    if segment_ids is not None:
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        scores = scores.masked_fill(~same, float("-inf"))
    probs = scores.softmax(-1).to(v.dtype)
    return (probs @ vh).transpose(1, 2)


def decayed_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token S_t = exp(g_t) S_{t-1} + k_t v_tᵀ, o_t = q_tᵀ S_t on [B, T, H, D] tensors.

    Returns (o [B, T, H, V], final state [B, H, K, V]); runs in the inputs' dtype.
    """
    B, T, H, K = q.shape
    state = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for t in range(T):
        state = log_decay[:, t, :, None, None].exp() * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, :, None] * state).sum(-2))
    return torch.stack(outs, dim=1), state


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
    """TTT-Linear in the primal form, token by token, with each token's gradient from autograd.

    Same signature and result as `kernels.ttt.ttt_linear`: every token of a mini-batch reads out
    with W_i = W_0 - s_i sum_{j <= i} lr_j dl_j/dW at W_0 (likewise b), l_j the LayerNorm
    reconstruction loss 1/2 |LN(k_j W + b) - (v_j - k_j)|²; complete mini-batches move W_0, b_0.
    """
    T, K = q.shape[1], token_scale.shape[0]

    def layer_norm(z: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(z, z.shape[-1:], eps=eps) * ln_weight + ln_bias

    outs = []
    for start in range(0, T, K):
        acc_w, acc_b = torch.zeros_like(weight), torch.zeros_like(bias)
        for i in range(min(K, T - start)):
            t = start + i
            with torch.enable_grad():
                w0, b0 = weight.detach().requires_grad_(), bias.detach().requires_grad_()
                z = (k[:, t, :, None, :] @ w0)[:, :, 0] + b0  # [B, H, D]
                loss = 0.5 * (layer_norm(z) - (v[:, t] - k[:, t])).pow(2).sum()
                grad_w, grad_b = torch.autograd.grad(loss, (w0, b0))
            acc_w = acc_w + lr[:, t, :, None, None] * grad_w
            acc_b = acc_b + lr[:, t, :, None] * grad_b
            w_i, b_i = weight - token_scale[i] * acc_w, bias - token_scale[i] * acc_b
            outs.append(q[:, t] + layer_norm((q[:, t, :, None, :] @ w_i)[:, :, 0] + b_i))
            if i == K - 1:
                weight, bias = w_i, b_i
    return torch.stack(outs, dim=1), weight, bias


def differential_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """(softmax(q1 k1^T / sqrt(d)) - lam softmax(q2 k2^T / sqrt(d))) v, the two maps formed explicitly.

    q [B, Tq, 2, H, d] and k [B, Tk, 2, Hkv, d] hold the two components; v is [B, Tk, Hkv, 2d];
    `lam` a scalar tensor. Returns [B, Tq, H, 2d]; component j of head h reads KV head h // (H // Hkv).
    """
    group = q.shape[3] // k.shape[3]
    dtype = _compute_dtype(q.dtype)
    maps = []
    for j in range(2):
        qh = q[:, :, j].transpose(1, 2).to(dtype)
        kh = k[:, :, j].repeat_interleave(group, dim=2).transpose(1, 2).to(dtype)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal:
            mask = causal_mask(scores.shape[-2], scores.shape[-1], device=q.device)
            scores = scores.masked_fill(~mask, float("-inf"))
        maps.append(scores.softmax(-1))
    probs = maps[0] - lam.to(dtype) * maps[1]
    vh = v.repeat_interleave(group, dim=2).transpose(1, 2).to(dtype)
    return (probs @ vh).transpose(1, 2).to(v.dtype)


def moe_experts(
    x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """Routed SwiGLU experts, one expert at a time: see `kernels.moe.moe_experts` for the shapes."""
    out = torch.zeros_like(x)
    for expert in range(w_down.shape[0]):
        tokens, slots = (expert_ids == expert).nonzero(as_tuple=True)
        y = swiglu(x[tokens] @ w_gate_up[expert].T) @ w_down[expert].T
        out = out.index_add(0, tokens, y * weights[tokens, slots, None])
    return out
