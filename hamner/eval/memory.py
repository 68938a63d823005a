"""The Hebbian memory's dynamics over real validation text (`hamner eval RUN --memory`).

For every layer with a Hebbian memory (`mixer = "hebbian"`, or beside other mixers as in
`agiformer-31m`'s "swa+hebbian"), per head:

- the effective decay λ = α (0.99 + 0.01 σ(θ)) and its horizon 1 / (1 − λ) in tokens;
- the memory's Frobenius norm ‖M_t‖ at every position t of the text, M_t = λ M_{t−1} + φ(k_t) v_tᵀ,
  recomputed from the layer's own q, k, v as the model reads the text;
- the share of the layer's mixer output that comes from the memory at each position,
  ‖m_t‖ / (‖m_t‖ + ‖a_t‖), m the memory's output and a the sum of the layer's other mixers' (1 for a
  layer whose only mixer is the memory), and the same per head (its slice of the output projection).

Averaged over `sequences` rows of held-out text. With several checkpoints (stage ends, say) each is
measured, so the figures show how λ, the norm and the share moved across the stages.
Written to OUT (default RUN/memory): memory.json, memory.png (the newest checkpoint) and, with
several checkpoints, memory_evolution.png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hamner.errors import EvalError
from hamner.eval.length_study import run_checkpoints, validation_stream
from hamner.model.mixers.hebbian import HebbianMemory
from hamner.model.transformer import HamnerModel
from hamner.run import checkpoint as ckpt
from hamner.run.durable import write_text
from hamner.use.load import load_for_inference

MEMORY_DIR = "memory"


def memory_layers(model: HamnerModel) -> list[tuple[int, HebbianMemory, list[torch.nn.Module]]]:
    """(layer index, its memory, its other mixers) for every layer holding a Hebbian memory."""
    found = []
    for index, layer in enumerate(model.layers):
        mixers = list(layer.attn.values()) if isinstance(layer.attn, torch.nn.ModuleDict) else [layer.attn]
        memories = [m for m in mixers if isinstance(m, HebbianMemory)]
        if memories:
            found.append((index, memories[0], [m for m in mixers if m is not memories[0]]))
    return found


@torch.no_grad()
def measure_memory(model: HamnerModel, tokens: torch.Tensor) -> list[dict[str, Any]]:
    """Per memory layer: λ, horizon, norm and share per position (means over the rows of `tokens` [B, T])."""
    layers = memory_layers(model)
    if not layers:
        raise EvalError("the model has no Hebbian memory (mixer \"hebbian\", e.g. agiformer-31m); nothing to study")
    captured: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for index, memory, others in layers:
        slot = captured.setdefault(index, {})
        hooks.append(memory.qkv.register_forward_hook(lambda _m, _i, out, s=slot: s.__setitem__("qkv", out)))
        hooks.append(memory.out.register_forward_hook(lambda _m, inp, out, s=slot: s.update(y=inp[0], m=out)))
        for other in others:
            hooks.append(other.register_forward_hook(
                lambda _m, _i, out, s=slot: s.__setitem__("a", out + s["a"] if "a" in s else out)))
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return [_layer_figures(index, memory, captured[index]) for index, memory, _ in layers]


def _layer_figures(index: int, memory: HebbianMemory, seen: dict[str, torch.Tensor]) -> dict[str, Any]:
    B, T, _ = seen["m"].shape
    H, D = memory.n_heads, memory.head_dim
    decay = memory.log_decay().exp()  # [H]
    q, k, v = seen["qkv"].float().view(B, T, 3, H, D).unbind(2)
    del q  # the memory's content depends on keys and values only
    k = F.elu(k) + 1.0
    state = k.new_zeros(B, H, D, D)
    norms = k.new_empty(T, H)
    for t in range(T):
        state = decay.view(1, H, 1, 1) * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        norms[t] = state.flatten(2).norm(dim=-1).mean(0)
    m = seen["m"].float().norm(dim=-1)  # [B, T]
    a = seen["a"].float().norm(dim=-1) if "a" in seen else torch.zeros_like(m)
    share = (m / (m + a).clamp_min(1e-12)).mean(0)
    y = seen["y"].float().view(B, T, H, D)
    weight = memory.out.weight.float().view(-1, H, D)  # [C, H, D]
    per_head = torch.einsum("bthd,chd->bthc", y, weight).norm(dim=-1)  # each head's part of the output [B, T, H]
    head_share = (per_head / (per_head.sum(-1, keepdim=True) + a[..., None]).clamp_min(1e-12)).mean(0)
    return {"layer": index, "plasticity": float(memory.alpha()), "decay": decay.tolist(),
            "horizon_tokens": (1.0 / (1.0 - decay).clamp_min(1e-12)).tolist(),
            "memory_norm": norms.T.tolist(), "share": share.tolist(), "head_share": head_share.T.tolist()}


def study_memory(run: str | Path, out: Path | None = None, *, all_checkpoints: bool = False, sequences: int = 4,
                 length: int | None = None, source: str | None = None,
                 device: torch.device | str = "cpu") -> tuple[dict[str, Any], list[Path]]:
    """Measure the memory of `run` (every checkpoint with `all_checkpoints`) on held-out text; write
    memory.json and the figures under `out` (default RUN/memory). Returns the report and the files."""
    run = Path(run)
    targets = run_checkpoints(run) if all_checkpoints else []
    if not targets:
        targets = [(None, run)]
    report: dict[str, Any] = {"run": str(run), "checkpoints": []}
    tokens = None
    for step, path in targets:
        model, config, tokenizer = load_for_inference(path, device)
        if tokens is None:
            length = length or config.max_seq_len
            if length > config.max_seq_len:
                raise EvalError(f"--length {length} is longer than the model's context ({config.max_seq_len})")
            stream = validation_stream(tokenizer, sequences * length, source)
            if len(stream) < sequences * length:
                raise EvalError(f"the validation text holds {len(stream)} tokens; {sequences} x {length} needed")
            tokens = torch.as_tensor(stream[: sequences * length]).view(sequences, length).to(device)
            report.update(sequences=sequences, length=length, stream=source or "built-in stories (held-out seed)")
        target = ckpt.resolve_checkpoint(path)
        report["checkpoints"].append({"checkpoint": str(target), "step": step if step is not None
                                      else ckpt.read_meta(target).get("step"), "layers": measure_memory(model, tokens)})
    out = out or run / MEMORY_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "memory.json", json.dumps(report, indent=1) + "\n")
    written = [out / "memory.json", plot_memory(report["checkpoints"][-1], out / "memory.png")]
    if len(report["checkpoints"]) > 1:
        written.append(plot_memory_evolution(report["checkpoints"], out / "memory_evolution.png"))
    return report, written


def plot_memory(measured: dict[str, Any], path: Path) -> Path:
    """One row per memory layer: the memory's norm per head along the text, the memory's share of the
    layer's output (the layer's line thick, each head's thin), and λ per head with its horizon."""
    from hamner.run.plot import plt, save_figure  # matplotlib (Agg) loads only when a plot is drawn

    layers = measured["layers"]
    fig, axes = plt.subplots(len(layers), 3, figsize=(15, 2.8 * len(layers)), squeeze=False)
    for row, layer in zip(axes, layers):
        for h, norms in enumerate(layer["memory_norm"]):
            row[0].plot(norms, lw=1, label=f"head {h}")
        row[0].set(yscale="log", ylabel=f"layer {layer['layer']}", title="memory norm ‖M_t‖ (per head)")
        for shares in layer["head_share"]:
            row[1].plot(shares, lw=0.6, alpha=0.6)
        row[1].plot(layer["share"], lw=2, color="black", label="all heads")
        row[1].set(ylim=(0, 1), title="share of the layer's mixer output from the memory")
        row[1].legend(fontsize=7, loc="upper right")
        heads = list(range(len(layer["decay"])))
        row[2].plot(heads, layer["decay"], "o", color="C2")
        row[2].set_xticks(heads)
        horizon = layer["horizon_tokens"]
        row[2].set(xlabel="head", ylabel="λ", title=f"decay λ per head (α = {layer['plasticity']:.2f}; horizon "
                   f"{min(horizon):.0f}–{max(horizon):.0f} tokens)")
    for ax in axes[-1][:2]:
        ax.set_xlabel("position in the text (tokens)")
    axes[0][0].legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle(f"Hebbian memory at step {measured['step']}")
    return save_figure(fig, path)


def plot_memory_evolution(checkpoints: list[dict[str, Any]], path: Path) -> Path:
    """Across checkpoints, per layer: mean λ, the mean memory norm at the end of the text, and the mean share."""
    from hamner.run.plot import plt, save_figure

    steps = [c["step"] for c in checkpoints]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    reductions = (("decay", lambda d: sum(d) / len(d)), ("memory_norm", lambda n: sum(h[-1] for h in n) / len(n)),
                  ("share", lambda s: sum(s) / len(s)))
    for i, layer in enumerate(checkpoints[0]["layers"]):
        for ax, (key, reduce) in zip(axes, reductions):
            ax.plot(steps, [reduce(c["layers"][i][key]) for c in checkpoints], "o-", ms=3,
                    label=f"layer {layer['layer']}")
    axes[0].set(title="mean decay λ", xlabel="step")
    axes[1].set(title="memory norm at the text's end (mean over heads)", xlabel="step", yscale="log")
    axes[2].set(title="memory's share of the mixer output", xlabel="step", ylim=(0, 1))
    axes[2].legend(fontsize=7)
    return save_figure(fig, path)


def format_memory(report: dict[str, Any]) -> str:
    """A table per checkpoint: per layer, α, λ range, horizon range, final norm and mean share."""
    lines = []
    for c in report["checkpoints"]:
        lines.append(f"step {c['step']}")
        lines.append("  layer  alpha  decay (min-max)      horizon  final norm  share")
        for layer in c["layers"]:
            d, h = layer["decay"], layer["horizon_tokens"]
            final = sum(n[-1] for n in layer["memory_norm"]) / len(layer["memory_norm"])
            share = sum(layer["share"]) / len(layer["share"])
            lines.append(f"  {layer['layer']:>5}  {layer['plasticity']:>5.2f}  {min(d):.4f}-{max(d):.4f}  "
                         f"{f'{min(h):.0f}-{max(h):.0f}':>11}  {final:>10.3g}  {share:.1%}")
    return "\n".join(lines)
