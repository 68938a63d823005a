"""Length studies: train every arm of a study on one curriculum, then compare their length generalisation.

A study spec (TOML, shipped in hamner/studies/) names a curriculum whose `[[evaluations]]` include
`length_gen`, the training settings every arm shares (data, intervals, steps, seed, device) and the
arms (a preset, optionally with model overrides: any HamnerConfig field). `hamner study SPEC` trains
each arm into OUT/ARM (an interrupted arm is resumed, a finished one skipped), reads the figures the
runs wrote while they trained (RUN/evals/all_summaries.json and metadata.json) and writes
OUT/report.json, OUT/report.md, an evolution plot per arm (chunk perplexity at each multiple of W
against the step, from step 0) and OUT/comparison.png: each arm's perplexity per position at its best
checkpoint (the one the curriculum's keep_best metric picked) and the ratio of every arm to the first.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamner.errors import HamnerError
from hamner.eval.length_study import plot_comparison, plot_evolution
from hamner.model.config import PRESETS, model_config, with_fields
from hamner.run.checkpoint import has_complete_checkpoint
from hamner.run.directory import EVALS
from hamner.run.durable import write_text
from hamner.toml_table import TomlTable, read_toml
from hamner.tournament.runs import write_model_file
from hamner.train.curriculum.spec import load_curriculum
from hamner.train.settings import TrainSettings, resume_settings

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
DONE = "study.json"  # written into an arm's directory once its training has ended
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"name", "description", "curriculum", "data", "max_steps", "seed", "device", "threads", "save_interval",
             "keep_checkpoints", "log_interval", "eval_batches", "task_samples", "arms"}
_ARM_KEYS = {"name", "preset", "model"}


class StudyError(HamnerError):
    """A bad study spec or a study that cannot go on; the message is one line for the user."""


@dataclass(frozen=True)
class Arm:
    """One model of the study: a preset and the HamnerConfig fields that override it."""

    name: str
    preset: str
    model: dict[str, Any]


@dataclass(frozen=True)
class StudySpec:
    """A study: the shared curriculum and settings, and its arms (the first is the ratios' denominator)."""

    name: str
    description: str
    curriculum: str
    settings: dict[str, Any]  # TrainSettings fields every arm shares
    arms: tuple[Arm, ...]
    path: Path


def available_studies() -> list[str]:
    """Names of the study specs shipped in hamner/studies/."""
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


def load_study(name_or_path: str) -> StudySpec:
    """Load and check a study spec by shipped name or path; every problem is one StudyError line."""
    path = Path(name_or_path)
    if not path.is_file():
        path = STUDIES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise StudyError(f"unknown study {name_or_path!r}; shipped studies: {', '.join(available_studies())} "
                             "(or give a path to a .toml file)")
    raw = read_toml(path, str(path), StudyError)
    top = TomlTable(raw, path.name, _TOP_KEYS, StudyError)
    top.required("curriculum", "arms")
    curriculum = top.text("curriculum")
    try:
        # a shipped name, or a file relative to the spec
        loaded = load_curriculum(path.parent / curriculum if curriculum.endswith(".toml") else curriculum)
    except HamnerError as exc:
        raise StudyError(f"{path.name}.curriculum: {exc}") from None
    if not any(e.kind == "length_gen" for e in loaded.evaluations):
        raise top.fail("curriculum", f"{loaded.name!r} has no [[evaluations]] of kind \"length_gen\" to compare")
    settings = {
        "curriculum": str(loaded.path), "data": top.text("data"), "max_steps": top.integer("max_steps", minimum=1),
        "seed": top.integer("seed", 1337), "device": top.text("device", "auto"),
        "threads": top.integer("threads", minimum=1), "save_interval": top.integer("save_interval", 1000, minimum=1),
        "keep_checkpoints": top.integer("keep_checkpoints", 3), "log_interval": top.integer("log_interval", minimum=1),
        "eval_batches": top.integer("eval_batches", minimum=1), "task_samples": top.integer("task_samples")}
    tables = raw["arms"]
    if not isinstance(tables, list) or len(tables) < 2:
        raise top.fail("arms", "must be an array of at least two [[arms]] tables")
    arms = []
    for i, table in enumerate(tables):
        where = f"{path.name}: arms[{i}]"
        f = TomlTable(table, where, _ARM_KEYS, StudyError)
        f.required("name", "preset")
        name, preset = f.text("name"), f.text("preset", None, tuple(PRESETS))
        if not _NAME.match(name):
            raise f.fail("name", f"must be a directory name (letters, digits, _ . -), got {name!r}")
        model = table.get("model", {})
        with_fields(model_config(preset), model, f"{where}.model", StudyError)  # refuse a bad field now
        arms.append(Arm(name, preset, dict(model)))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise top.fail("arms", f"arm names must differ, got {names}")
    return StudySpec(top.text("name", path.stem), top.text("description") or "", loaded.name, settings,
                     tuple(arms), path)


def train_arm(spec: StudySpec, arm: Arm, directory: Path, data: str | None, say: Any = print) -> str:
    """Train one arm into `directory` (resuming an interrupted run, skipping a finished one); its end reason."""
    done = directory / DONE
    if done.is_file():
        return json.loads(done.read_text())["reason"]
    from hamner.train.trainer import train

    directory.mkdir(parents=True, exist_ok=True)
    model_file = None
    if arm.model:
        model_file = str(write_model_file(directory.parent / f"{arm.name}.model.toml",
                                          with_fields(model_config(arm.preset), arm.model, arm.name, StudyError),
                                          arm.preset))
    resume = has_complete_checkpoint(directory)
    say(f"{'resuming' if resume else 'training'} arm {arm.name} ({arm.preset}) in {directory}")
    settings = {k: v for k, v in spec.settings.items() if v is not None}
    settings["data"] = data or settings.get("data")
    if resume:
        given = {"resume": str(directory), **{k: settings[k] for k in ("device", "threads") if k in settings}}
        chosen = resume_settings(directory, given)
    else:
        chosen = TrainSettings(**settings, preset=arm.preset, model=model_file, out=str(directory), sample_tokens=0)
    reason = train(chosen).reason
    if reason == "signal":
        raise KeyboardInterrupt
    write_text(done, json.dumps({"reason": reason}) + "\n")
    return reason


def read_arm(arm: Arm, directory: Path) -> dict[str, Any]:
    """What an arm's run wrote while it trained: its set-up, results and every evaluation step."""
    evals = directory / EVALS
    try:
        metadata = json.loads((evals / "metadata.json").read_text())
        summaries = json.loads((evals / "all_summaries.json").read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"arm {arm.name}: cannot read its evaluations in {evals}: {exc}") from None
    steps = [s for s in summaries if "length_gen" in s]
    if not steps:
        raise StudyError(f"arm {arm.name}: {evals} holds no length_gen evaluation")
    results = metadata.get("results", {})
    best_step = (results.get("best") or {}).get("step")
    best = next((s for s in steps if s["step"] == best_step), steps[-1])
    return {"name": arm.name, "preset": arm.preset, "model": arm.model, "directory": str(directory),
            "parameters": metadata["parameters"], "results": results, "best": best, "steps": steps}


def _evolution(arm: dict[str, Any]) -> dict[str, Any]:
    """An arm's evaluations in the form hamner.eval.length_study plots."""
    grid = arm["steps"][0]["length_gen"]
    return {"run": arm["directory"], "mode": "single", "window": grid["window"], "chunk": grid["chunk"],
            "stride": grid["stride"], "checkpoints": [{"step": s["step"], "rows": s["length_gen"]["rows"]}
                                                      for s in arm["steps"]]}


def write_study_report(spec: StudySpec, out: Path, arms: list[dict[str, Any]]) -> tuple[str, list[Path]]:
    """report.json, report.md and the plots; returns the markdown table and the files written."""
    base = {r["multiple"]: r for r in arms[0]["best"]["length_gen"]["rows"]}
    multiples = sorted(base)
    written = [plot_evolution(_evolution(arm), out / f"evolution-{arm['name']}.png") for arm in arms]
    comparisons = {}
    for arm in arms[1:]:
        rows = {r["multiple"]: r for r in arm["best"]["length_gen"]["rows"]}
        comparisons[arm["name"]] = [
            {"multiple": m, "position": base[m]["position"], "perplexity_a": rows[m]["perplexity"],
             "perplexity_b": base[m]["perplexity"], "ratio": rows[m]["perplexity"] / base[m]["perplexity"]}
            for m in multiples]
        written.append(plot_comparison(comparisons[arm["name"]], (arm["name"], arms[0]["name"]),
                                       out / f"comparison-{arm['name']}.png"))
    head = "| arm | parameters | steps | end | best step | " + " | ".join(f"PPL@{m}W" for m in multiples) + " |"
    lines = [f"# Study {spec.name}", "", spec.description, "",
             f"Curriculum `{spec.curriculum}`; chunk perplexity at each multiple of W at the best checkpoint "
             f"(by the curriculum's keep_best metric); ratios are each arm over `{arms[0]['name']}`.", "",
             head, "|" + "---|" * (5 + len(multiples))]
    for arm in arms:
        res = arm["results"]
        end = (res.get("last_stage_end") or {}).get("reason") or res.get("reason", "?")
        rows = {r["multiple"]: r for r in arm["best"]["length_gen"]["rows"]}
        lines.append(f"| {arm['name']} | {arm['parameters']:,} | {res.get('step', '?')} | {end} | "
                     f"{arm['best']['step']} | " + " | ".join(f"{rows[m]['perplexity']:.3f}" for m in multiples) + " |")
    for name, rows in comparisons.items():
        lines.append(f"| ratio {name} / {arms[0]['name']} | | | | | "
                     + " | ".join(f"{r['ratio']:.3f}" for r in rows) + " |")
    table = "\n".join(lines[6:])
    lines += ["", *[f"![{p.stem}]({p.name})" for p in written]]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    report = {"study": spec.name, "curriculum": spec.curriculum, "arms": arms, "comparisons": comparisons}
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return table, [out / "report.md", out / "report.json", *written]


def run_study(spec: StudySpec, out: Path, data: str | None = None, say: Any = print) -> tuple[str, list[Path]]:
    """Train every arm (skipping finished ones) and write the comparison; see the module docstring."""
    out.mkdir(parents=True, exist_ok=True)
    if not (data or spec.settings["data"]) and load_curriculum(spec.settings["curriculum"]).data_sources():
        raise StudyError(f"study {spec.name}: curriculum {spec.curriculum!r} trains on prepared data: give --data DIR")
    arms = []
    for arm in spec.arms:
        train_arm(spec, arm, out / arm.name, data, say)
        arms.append(read_arm(arm, out / arm.name))
    return write_study_report(spec, out, arms)
