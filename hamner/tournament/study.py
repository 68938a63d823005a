"""Studies: train every arm of a study on one curriculum, then compare their length generalisation or probes.

A study spec (TOML, shipped in hamner/studies/) names a curriculum whose `[[evaluations]]` include
`length_gen` (a length study) or which names a `probe` (a probe study), the training settings every
arm shares (data, intervals, steps, seed, device) and the arms: a preset, optionally with model
overrides (any HamnerConfig field) and source renames (`sources = { OLD = NEW }`: the arm trains a
copy of the curriculum, OUT/ARM.curriculum.toml, where every double-quoted OLD (source tables, the
stage weights, the probe) reads NEW: how one curriculum is swept over data, e.g. concepts/capacity-N).
`hamner study SPEC` trains each arm into OUT/ARM (an interrupted arm is resumed, a finished one
skipped), reads the figures the runs wrote while they trained and writes OUT/report.json and
OUT/report.md.

A length study reads RUN/evals/all_summaries.json and metadata.json and adds an evolution plot per arm
(chunk perplexity at each multiple of W against the step, from step 0) and OUT/comparison.png: each
arm's perplexity per position at its best checkpoint (the one the curriculum's keep_best metric
picked) and the ratio of every arm to the first. A probe study reads each arm's probe.csv at its last
step: accuracy per kind, trained and held out, and the knee: the last arm, in the spec's order, up to
which every arm's trained accuracy is at least `knee` (default 0.9); with arms in increasing order of
load, the largest load the model still carries.
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
from hamner.run.directory import EVALS, read_rows
from hamner.run.directory import PROBE as PROBE_CSV
from hamner.run.durable import write_text
from hamner.toml_table import TomlTable, read_toml
from hamner.tournament.runs import write_if_changed, write_model_file
from hamner.train.curriculum.spec import Curriculum, load_curriculum, parse_curriculum
from hamner.train.settings import TrainSettings, resume_settings

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
DONE = "study.json"  # written into an arm's directory once its training has ended
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"name", "description", "curriculum", "data", "max_steps", "seed", "device", "threads", "save_interval",
             "keep_checkpoints", "log_interval", "eval_batches", "task_samples", "arms", "knee"}
_ARM_KEYS = {"name", "preset", "model", "sources"}
LENGTH, PROBE = "length", "probe"  # what a study compares


class StudyError(HamnerError):
    """A bad study spec or a study that cannot go on; the message is one line for the user."""


@dataclass(frozen=True)
class Arm:
    """One model of the study: a preset, the HamnerConfig fields that override it and its source renames."""

    name: str
    preset: str
    model: dict[str, Any]
    sources: dict[str, str]


@dataclass(frozen=True)
class StudySpec:
    """A study: the shared curriculum and settings, and its arms (the first is the ratios' denominator)."""

    name: str
    description: str
    curriculum: str
    settings: dict[str, Any]  # TrainSettings fields every arm shares
    arms: tuple[Arm, ...]
    path: Path
    kind: str  # LENGTH or PROBE
    knee: float  # a probe study's recall threshold


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
    kind = LENGTH if any(e.kind == "length_gen" for e in loaded.evaluations) else PROBE if loaded.probe else None
    if kind is None:
        raise top.fail("curriculum", f"{loaded.name!r} has no [[evaluations]] of kind \"length_gen\" and no probe "
                                     "to compare")
    if kind == LENGTH and "knee" in raw:
        raise top.fail("knee", "only a probe study has a knee")
    knee = top.number("knee", 0.9, low=0.0, high=1.0, low_open=True)
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
        sources = _renames(table.get("sources", {}), f"{where}.sources", loaded.sources())
        arm = Arm(name, preset, dict(model), sources)
        if sources:
            arm_curriculum(loaded.path, arm)  # refuse a renamed curriculum that does not load now
        arms.append(arm)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise top.fail("arms", f"arm names must differ, got {names}")
    return StudySpec(top.text("name", path.stem), top.text("description") or "", loaded.name, settings,
                     tuple(arms), path, kind, knee)


def _renames(table: Any, where: str, sources: list[str]) -> dict[str, str]:
    """An arm's `sources = { OLD = NEW }`: each OLD a source the curriculum trains on, each NEW a string."""
    f = TomlTable(table, where, None, StudyError)
    for old in table:
        if old not in sources:
            raise f.fail(old, f"not a source of the curriculum (its sources: {', '.join(sources)})")
        f.text(old)
    return dict(table)


def arm_curriculum(template: Path, arm: Arm, out: Path | None = None) -> Curriculum:
    """The curriculum `template` with the arm's sources renamed (every double-quoted old name reads the new one),
    written to `out` when given; a renamed curriculum that does not load is one StudyError line."""
    text = template.read_text(encoding="utf-8")
    for old, new in arm.sources.items():
        text = text.replace(json.dumps(old), json.dumps(new))
    where = out or template.with_name(f"{arm.name}.curriculum.toml")
    try:
        if out is None:
            return parse_curriculum(text, where)
        write_if_changed(out, text)
        return load_curriculum(out)
    except HamnerError as exc:
        raise StudyError(f"arm {arm.name}: the curriculum with its sources renamed: {exc}") from None


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
    if arm.sources:
        renamed = directory.parent / f"{arm.name}.curriculum.toml"
        arm_curriculum(Path(settings["curriculum"]), arm, renamed)
        settings["curriculum"] = str(renamed)
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


def read_probe_arm(arm: Arm, directory: Path) -> dict[str, Any]:
    """An arm of a probe study: its parameters, how it ended and its probe rows at the last step probed."""
    try:
        metadata = json.loads((directory / EVALS / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"arm {arm.name}: cannot read its probe in {directory}: {exc}") from None
    rows = read_rows(directory / PROBE_CSV)
    if not rows:
        raise StudyError(f"arm {arm.name}: {directory / PROBE_CSV} holds no probe")
    step = max(int(r["step"]) for r in rows)
    probe = [{"kind": r["kind"], "split": r["split"], "correct": int(r["correct"]), "total": int(r["total"]),
              "accuracy": float(r["accuracy"])} for r in rows if int(r["step"]) == step]
    return {"name": arm.name, "preset": arm.preset, "model": arm.model, "sources": arm.sources,
            "directory": str(directory), "parameters": metadata["parameters"], "results": metadata.get("results", {}),
            "probe_step": step, "probe": probe}


def knee(arms: list[dict[str, Any]], threshold: float) -> str | None:
    """The last arm, in order, up to which every arm's trained accuracy (kind all) is at least `threshold`."""
    last = None
    for arm in arms:
        trained = next((r for r in arm["probe"] if r["kind"] == "all" and r["split"] == "trained"), None)
        if trained is None or trained["accuracy"] < threshold:
            break
        last = arm["name"]
    return last


def write_probe_report(spec: StudySpec, out: Path, arms: list[dict[str, Any]]) -> tuple[str, list[Path]]:
    """report.json and report.md of a probe study; returns the markdown table and the files written."""
    lines = ["| arm | parameters | steps | kind | trained | held out |", "|---|---|---|---|---|---|"]
    for arm in arms:
        kinds = list(dict.fromkeys(r["kind"] for r in arm["probe"]))
        cells = {(r["kind"], r["split"]): f"{100 * r['accuracy']:.0f} % ({r['correct']}/{r['total']})"
                 for r in arm["probe"]}
        for kind in kinds:
            if kind == "all" and len(kinds) == 2:
                continue  # the same as its one kind
            lines.append(f"| {arm['name']} | {arm['parameters']:,} | {arm['results'].get('step', '?')} | {kind} | "
                         f"{cells.get((kind, 'trained'), '-')} | {cells.get((kind, 'held_out'), '-')} |")
    found = knee(arms, spec.knee)
    lines += ["", f"knee (every arm up to it recalls at least {100 * spec.knee:.0f} % of its trained items): "
              + (found or f"none ({arms[0]['name']} already recalls less)")]
    table = "\n".join(lines)
    text = "\n".join([f"# Study {spec.name}", "", spec.description, "",
                      f"Curriculum `{spec.curriculum}`; exact-match probe accuracy at each arm's last probed step.",
                      "", table]) + "\n"
    write_text(out / "report.md", text)
    report = {"study": spec.name, "curriculum": spec.curriculum, "knee_threshold": spec.knee, "knee": found,
              "arms": arms}
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return table, [out / "report.md", out / "report.json"]


def run_study(spec: StudySpec, out: Path, data: str | None = None, say: Any = print) -> tuple[str, list[Path]]:
    """Train every arm (skipping finished ones) and write the comparison; see the module docstring."""
    out.mkdir(parents=True, exist_ok=True)
    if not (data or spec.settings["data"]) and load_curriculum(spec.settings["curriculum"]).data_sources():
        raise StudyError(f"study {spec.name}: curriculum {spec.curriculum!r} trains on prepared data: give --data DIR")
    read = read_arm if spec.kind == LENGTH else read_probe_arm
    arms = []
    for arm in spec.arms:
        train_arm(spec, arm, out / arm.name, data, say)
        arms.append(read(arm, out / arm.name))
    return (write_study_report if spec.kind == LENGTH else write_probe_report)(spec, out, arms)
