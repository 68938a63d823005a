"""The tournament report: report.json (the numbers), report.md (tables a person reads) and PNG plots.

Per entrant: sizes (total, active and non-embedding parameters, FLOPs per token, the knob value
and how far from the base it landed), the round it reached and its overall rank, tokens, best
LR, validation loss (mean and spread over seeds) with its difference from the baseline entrant
in the same round, tokens/s, MFU, peak memory, skipped steps and synthetic-task accuracy. Plots:
validation loss against tokens and against wall-clock time, all entrants of a round together, each
the mean over its seeds with their min-max as a band.
Every file is written to a temporary name and renamed, so a kill never leaves half a report.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hamner.run.durable import write_text  # noqa: E402
from hamner.run.plot import save_figure  # noqa: E402
from hamner.tournament.rounds import Outcome, RoundOutcome, is_tie, mean_and_spread  # noqa: E402
from hamner.tournament.runs import RunResult  # noqa: E402
from hamner.tournament.sizing import model_size  # noqa: E402

MEASURE_NAMES = {"non_embedding": "non-embedding parameters", "active": "active non-embedding parameters",
                 "flops_per_token": "training FLOPs per token"}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return sum(present) / len(present) if present else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def build_report(outcome: Outcome) -> dict:
    """The whole report as JSON-ready data (see the module docstring)."""
    spec = outcome.spec
    base = model_size(spec.base, spec.seq_len)
    reached = {name: r for r in outcome.rounds for name in r.ranking}  # the last round each entrant ran in
    order = sorted(outcome.entrants, key=lambda n: (-reached[n].index, reached[n].ranking.index(n))
                   if n in reached else (0, 0))
    entrants = []
    ranked = [n for n in order if n in reached and math.isfinite(mean_and_spread(reached[n].results[n])[0])]
    for name in order:
        sized = outcome.entrants[name]
        size = sized.resized.size
        row = {"name": name, "parameters": size.parameters, "active_parameters": size.active + (
            size.parameters - size.non_embedding), "non_embedding_parameters": size.non_embedding,
            "flops_per_token": size.flops_per_token, "measured": size.measure(spec.measure),
            "knob": sized.resized.knob, "knob_value": sized.resized.value,
            "size_error": sized.resized.error, "resized": sized.entrant.resize, "model": sized.resized.config.to_dict(),
            "curriculum": sized.entrant.curriculum,  # None: the spec's one-stage [data] mix
            "rank": ranked.index(name) + 1 if name in ranked else None,  # finished runs with a finite loss only
            "round_reached": reached[name].index if name in reached else 0}
        sweep = outcome.sweeps.get(name)
        row["best_lr"] = sweep.best_lr if sweep else spec.lr
        row["lr_at_edge"] = sweep.at_edge if sweep else None
        row["lr_sweep"] = {f"{lr:.6g}": _finite(v) for lr, v in sweep.losses.items()} if sweep else None
        rnd = reached.get(name)
        runs = rnd.results[name] if rnd else []
        mean, spread = mean_and_spread(runs) if runs else (math.nan, math.nan)
        baseline = rnd.results.get(spec.baseline) if rnd else None
        row.update({
            "tokens": runs[0].tokens if runs else 0,
            "val_loss": _finite(mean), "val_loss_spread": _finite(spread) if runs else None,
            "val_loss_seeds": [_finite(r.val_loss) for r in runs],
            "val_loss_delta": _finite(mean - mean_and_spread(baseline)[0]) if baseline else None,
            "tokens_per_s": _mean([r.tokens_per_s for r in runs]), "mfu": _mean([r.mfu for r in runs]),
            "peak_memory": max((r.peak_memory for r in runs if r.peak_memory is not None), default=None),
            "skipped_steps": sum(r.skipped_steps for r in runs),
            "task_accuracy": _mean([r.task_accuracy for r in runs]),
            "ranks": {str(r.index): r.ranking.index(name) + 1 for r in outcome.rounds if name in r.ranking},
        })
        entrants.append(row)
    final = outcome.rounds[-1] if outcome.rounds else None
    verdict = None
    if final and len(final.ranking) >= 2:
        finite = [n for n in final.ranking if math.isfinite(mean_and_spread(final.results[n])[0])]
        if not finite:
            verdict = {"winner": None, "runner_up": None, "difference": None, "spread": None, "tie": False,
                       "no_result": "no entrant of the final round has a finite validation loss"}
        else:
            a, b = finite[0], (finite[1:] or [n for n in final.ranking if n != finite[0]])[0]
            (mean_a, spread_a), (mean_b, spread_b) = mean_and_spread(final.results[a]), mean_and_spread(
                final.results[b])
            verdict = {"winner": a, "runner_up": b, "difference": _finite(mean_b - mean_a),
                       "spread": math.hypot(spread_a, spread_b), "tie": is_tie(final.results[a], final.results[b])}
    return {
        "name": spec.name, "description": spec.description, "spec": str(spec.path),
        "measure": spec.measure, "tolerance": spec.tolerance, "baseline": spec.baseline,
        "base": {"preset": spec.base_name, "parameters": base.parameters,
                 "non_embedding_parameters": base.non_embedding,
                 "active_parameters": base.active + base.parameters - base.non_embedding,
                 "flops_per_token": base.flops_per_token, "target": base.measure(spec.measure)},
        "batch_size": spec.batch_size, "seq_len": spec.seq_len, "tokens_per_step": spec.tokens_per_step,
        "lr": spec.lr, "seeds": list(spec.seeds),
        "rounds": [{"round": r.index, "tokens": r.tokens, "steps": r.steps, "ranking": r.ranking,
                    "val_loss": {n: _finite(mean_and_spread(r.results[n])[0]) for n in r.ranking},
                    "val_loss_spread": {n: _finite(mean_and_spread(r.results[n])[1]) for n in r.ranking},
                    "seeds": len(next(iter(r.results.values()))) if r.results else 0} for r in outcome.rounds],
        "final": verdict,
        "entrants": entrants,
    }


def _fmt(value: float | None, spec: str = ".4f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}G" if n >= 1e8 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def format_markdown(report: dict, plots: list[Path]) -> str:
    """report.md: fairness, results, ranks per round, the verdict and the plots."""
    b = report["base"]
    measure = MEASURE_NAMES[report["measure"]]
    lines = [f"# Tournament {report['name']}", ""]
    if report["description"]:
        lines += [report["description"], ""]
    kept = [e["name"] for e in report["entrants"] if not e["resized"]]
    sizing = (f"Every entrant is resized to the base's {measure} ({b['target']:,.0f}) within "
              f"±{100 * report['tolerance']:g}% by its knob" if not kept else
              "No entrant is resized (resize = false)" if len(kept) == len(report["entrants"]) else
              f"Every entrant but {', '.join(kept)} (resize = false) is resized to the base's {measure} "
              f"({b['target']:,.0f}) within ±{100 * report['tolerance']:g}% by its knob")
    curricula = {e["name"]: e["curriculum"] for e in report["entrants"]}
    data = ("" if len(set(curricula.values())) == 1 else
            "; each trains its curriculum fitted to the round's steps (" +
            ", ".join(f"{n}: `{Path(c).stem if c else '[data]'}`" for n, c in curricula.items()) + ")")
    lines += [f"Base: preset `{b['preset']}`, {b['parameters']:,} parameters ({b['non_embedding_parameters']:,} "
              f"non-embedding, {b['flops_per_token']:,.0f} FLOPs per token). {sizing}; "
              f"all train on the same batches (batch {report['batch_size']} x {report['seq_len']} tokens, same seeds "
              f"and steps per round){data}, peak LR {report['lr']:g} unless swept.", "",
              "## Sizes", "",
              "| entrant | knob | parameters | active | non-embedding | FLOPs/token | matched measure | vs base |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in report["entrants"]:
        lines.append(f"| {e['name']} | {e['knob']} = {e['knob_value']} | {e['parameters']:,} | "
                     f"{e['active_parameters']:,} | {e['non_embedding_parameters']:,} | "
                     f"{_count(e['flops_per_token'])} | {e['measured']:,.0f} | {100 * e['size_error']:+.2f}% |")
    lines += ["", "## Results", "",
              f"Validation loss at the end of the last round each entrant reached: mean ± spread (standard "
              f"deviation) over seeds; Δ is the difference from the baseline `{report['baseline']}` in that round.", "",
              "| rank | entrant | round | tokens | best LR | val loss | Δ baseline | tokens/s | MFU | peak mem | "
              "skipped | task acc |",
              "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for e in report["entrants"]:
        edge = " (edge)" if e["lr_at_edge"] else ""
        loss = f"{_fmt(e['val_loss'])} ± {_fmt(e['val_loss_spread'])}" if e["val_loss"] is not None else "diverged"
        mem = f"{e['peak_memory'] / 2**20:,.0f} MiB" if e["peak_memory"] is not None else "n/a"
        lines.append(f"| {e['rank'] or '-'} | {e['name']} | {e['round_reached']} | {e['tokens']:,} | "
                     f"{e['best_lr']:.3g}{edge} | {loss} | {_fmt(e['val_loss_delta'], '+.4f', '-')} | "
                     f"{_fmt(e['tokens_per_s'], ',.0f')} | {_fmt(e['mfu'] and 100 * e['mfu'], '.1f')}"
                     f"{'%' if e['mfu'] is not None else ''} | {mem} | {e['skipped_steps']} | "
                     f"{_fmt(e['task_accuracy'] and 100 * e['task_accuracy'], '.0f')}"
                     f"{'%' if e['task_accuracy'] is not None else ''} |")
    lines += ["", "## Rounds", "", f"| round | tokens | seeds | ranking: val loss (Δ {report['baseline']}) |",
              "|---:|---:|---:|---|"]
    for r in report["rounds"]:
        base = r["val_loss"].get(report["baseline"])
        ranking = ", ".join(
            f"{i}. {n} {_fmt(r['val_loss'][n])}" + (f" ({r['val_loss'][n] - base:+.4f})"
                                                      if base is not None and r["val_loss"][n] is not None else "")
            for i, n in enumerate(r["ranking"], start=1))
        lines.append(f"| {r['round']} | {r['tokens']:,} | {r['seeds']} | {ranking} |")
    final = report["final"]
    if final:
        lines += ["", "## Verdict", ""]
        if final["winner"] is None:
            lines.append(f"**No winner**: {final['no_result']} (every run diverged or never validated).")
        elif final["difference"] is None:
            lines.append(f"**{final['winner']}** wins: it is the only finalist with a finite validation loss "
                         f"({final['runner_up']} has none).")
        elif final["tie"]:
            lines.append(f"**Tie** between {final['winner']} and {final['runner_up']}: they differ by "
                         f"{_fmt(final['difference'])}, within the seeds' spread of {final['spread']:.4f}.")
        else:
            why = (f"more than the seeds' spread of {final['spread']:.4f}" if final["spread"] > 0
                   else "with a single seed, so no spread to call a tie")
            lines.append(f"**{final['winner']}** wins: {_fmt(final['difference'])} lower validation loss than "
                         f"{final['runner_up']}, {why}.")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_round(rnd: RoundOutcome, path: Path) -> Path:
    """Write `draw_round`'s figure of round `rnd` to `path` as PNG."""
    return save_figure(draw_round(rnd), path, dpi=100)


def draw_round(rnd: RoundOutcome) -> plt.Figure:
    """Validation loss against tokens and against wall-clock time, one colour per entrant: the mean over
    its seeds as a line and, with several seeds, their min-max as a band."""
    fig, (by_tokens, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, name in enumerate(rnd.ranking):
        colour = f"C{i % 10}"
        rows = seed_spread(rnd.results[name])
        if not rows:
            continue
        tokens, seconds, mean, low, high = zip(*rows)
        for ax, x in ((by_tokens, tokens), (by_time, seconds)):
            ax.plot(x, mean, color=colour, marker="o", ms=3, label=name if ax is by_tokens else None)
            if len(rnd.results[name]) > 1:
                ax.fill_between(x, low, high, color=colour, alpha=0.2, lw=0)
    by_tokens.set_xlabel("tokens")
    by_time.set_xlabel("wall-clock seconds (training; mean over seeds)")
    for ax in (by_tokens, by_time):
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    if by_tokens.lines:  # every entrant diverged: nothing to label
        by_tokens.legend(fontsize=8, title="mean over seeds; band: min-max", title_fontsize=8)
    fig.suptitle(f"round {rnd.index}: {rnd.tokens:,} tokens per run")
    return fig


def seed_spread(runs: list[RunResult]) -> list[tuple[float, float, float, float, float]]:
    """(tokens, mean seconds, mean, min, max of the validation loss) at each token count some seed validated
    at, over the seeds with a finite loss there (the seeds of an entrant validate at the same token counts)."""
    at: dict[float, list[tuple[float, float]]] = {}
    for run in runs:
        for tokens, seconds, loss in run.curve:
            if math.isfinite(loss):
                at.setdefault(tokens, []).append((seconds, loss))
    rows = []
    for tokens in sorted(at):
        seconds, losses = zip(*at[tokens])
        rows.append((tokens, sum(seconds) / len(seconds), sum(losses) / len(losses), min(losses), max(losses)))
    return rows


def write_report(outcome: Outcome, out: Path) -> dict:
    """Write report.json, report.md and round-N.png into `out`; returns the report."""
    report = build_report(outcome)
    plots = [plot_round(r, out / f"round-{r.index}.png") for r in outcome.rounds]
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", format_markdown(report, plots))
    return report
