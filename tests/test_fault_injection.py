"""Fault injection: a training process is killed at every filesystem step of saving a checkpoint and
of opening a run for --resume. After every kill, `latest` names a complete checkpoint (or there is
none and the directory starts afresh), no log lost a row that the checkpoint covers, no temporary
survives the next start, and the recovered run's per-step metrics equal an uninterrupted run's.

Mechanism: each run to be killed happens in a forked child whose `os.fsync`, `os.rename` and
`os.replace` are wrapped. The wrapper counts the calls that touch the run directory and, at the
N-th, ends the process with `os._exit(137)`: no cleanup, no `finally`, like SIGKILL. A "torn" kill
at a file's fsync first cuts the file to half its length, which is what a kill in the middle of
writing it leaves. The kill points are not guessed: a clean run with the same wrappers in
recording mode lists them, and the test asserts that the list holds every kind of step (each file
write, each fsync, each rename, each log trim).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from pathlib import Path

import pytest
from train_helpers import metrics, tiny_settings, write_curriculum, write_tiny_tournament

from hamner.run import checkpoint as ckpt
from hamner.tournament.report import write_report
from hamner.tournament.rounds import run_tournament
from hamner.tournament.spec import load_spec
from hamner.train.evaluation import TrainEvaluator
from hamner.train.settings import resume_settings
from hamner.train.trainer import train
from hamner.use.load import load_model

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or not hasattr(os, "fork"),
                                reason="the kill hook forks and names fsync'ed files through /proc/self/fd")

TOTAL = 6  # steps of the uninterrupted reference run
KILLED = 4  # steps the killed run is asked for
HOOKED = ("fsync", "rename", "replace")
COMPARED = ("step", "stage", "loss", "val_loss", "lr", "grad_norm", "tokens")  # not timings


class FaultPlan:
    """Counts the hooked calls under `root`; kills the process at call number `kill_at` (1-based)."""

    def __init__(self, root: Path, kill_at: int | None = None, torn: bool = False) -> None:
        self.root = str(root)
        self.kill_at = kill_at
        self.torn = torn
        self.events: list[tuple[str, str, bool]] = []  # (call, "path" or "src -> dst" under root, on a file)
        self.real = {name: getattr(os, name) for name in HOOKED}

    def install(self) -> None:
        for name in HOOKED:
            setattr(os, name, self._hook(name))

    def uninstall(self) -> None:
        for name, real in self.real.items():
            setattr(os, name, real)

    def _hook(self, name: str):
        real = self.real[name]

        def hooked(*args):
            paths = [os.readlink(f"/proc/self/fd/{args[0]}")] if name == "fsync" else [os.fspath(a) for a in args[:2]]
            if paths[0].startswith(self.root):
                described = " -> ".join(os.path.relpath(p, self.root) for p in paths)
                self.events.append((name, described, os.path.isfile(paths[0])))
                if len(self.events) == self.kill_at:
                    if self.torn:
                        os.truncate(paths[0], os.path.getsize(paths[0]) // 2)
                    os._exit(137)
            return real(*args)

        return hooked


def record(root: Path, run) -> list[tuple[str, str, bool]]:
    """The hooked calls a clean `run()` makes under the run directory `root`."""
    plan = FaultPlan(root)
    plan.install()
    try:
        run()
    finally:
        plan.uninstall()
    return plan.events


def run_killed(root: Path, run, kill_at: int, torn: bool) -> None:
    """`run()` in a forked child that dies at hooked call `kill_at` under the run directory `root`."""
    err = root.parent / f"{root.name}.err"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            FaultPlan(root, kill_at, torn).install()
            run()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert status == 137, f"kill point {kill_at} not reached (exit {status}): {err.read_text()[-2000:]}"
    err.unlink()


def kill_points(events: list[tuple[str, str, bool]]) -> list[tuple[int, bool, str]]:
    """(call number, torn, description): every hooked call, and a torn write at every file's fsync."""
    points = []
    for i, (call, path, on_file) in enumerate(events, start=1):
        points.append((i, False, f"{call} {path}"))
        if call == "fsync" and on_file:
            points.append((i, True, f"torn write of {path}"))
    return points


def describe(events: list[tuple[str, str, bool]]) -> str:
    return " | ".join(f"{call} {path}" for call, path, _ in events)


def rows(run_dir: Path) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in COMPARED) for r in metrics(run_dir)]


def assert_consistent(run_dir: Path, reference: list[tuple[str, ...]]) -> bool:
    """The checkpoint a resume starts from (the one `latest` names, or the newest complete one when a kill
    came before `latest` named it) is complete and loadable, and the logs hold every row up to its step.
    Returns whether there is a checkpoint to resume."""
    if not ckpt.has_complete_checkpoint(run_dir):
        return False
    target = ckpt.resume_target(run_dir)[0]
    step = ckpt.load_trainer_state(target)["progress"]["step"]
    load_model(target)
    assert [r for r in rows(run_dir) if int(r[0]) <= step] == reference[:step]
    return True


def assert_no_temporaries(run_dir: Path) -> None:
    left = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    left += [p.name for p in [*run_dir.glob(".*.tmp"), *run_dir.glob("*/.*.tmp")]]
    assert not left, left


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The curriculum, and the reference metrics of an uninterrupted run of TOTAL steps.

    Runs live in memory (/dev/shm) where there is one: a kill loses nothing the page cache holds,
    so the outcome is the same as on disk, and fsync costs nothing."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="hamner-faults-", dir=shm))
    else:
        root = tmp_path_factory.mktemp("faults")
    curriculum = write_curriculum(root, first=100, second=1, eval_interval=3)
    reference = root / "reference"
    train(settings(reference, curriculum, TOTAL))
    yield root, curriculum, rows(reference)
    shutil.rmtree(root, ignore_errors=True)


def settings(run_dir: Path, curriculum: Path, max_steps: int):
    return tiny_settings(run_dir, curriculum, max_steps=max_steps, save_interval=2, keep_checkpoints=0)


def recover(run_dir: Path, curriculum: Path, resumable: bool) -> None:
    """What a user does after a crash: resume, or start afresh when no checkpoint was complete."""
    if resumable:
        train(resume_settings(run_dir, {"max_steps": TOTAL}))
    else:
        train(settings(run_dir, curriculum, TOTAL))


def test_kill_at_every_step_of_saving_checkpoints(setup):
    root, curriculum, reference = setup
    clean = root / "clean-save"
    events = record(clean, lambda: train(settings(clean, curriculum, KILLED)))
    described = describe(events)
    for step in ("config.json", "checkpoints/.tmp-step-00000002-", "checkpoints/.tmp-step-00000004-",
                 "checkpoints/.tmp-best-", "-> checkpoints/step-00000004", "-> checkpoints/latest",
                 "-> checkpoints/.del-step-00000002-"):
        assert step in described, f"no hooked call for {step}: {described}"
    failures = []
    for kill_at, torn, what in kill_points(events):
        run_dir = root / f"save-{kill_at}-{int(torn)}"
        try:
            run_killed(run_dir, lambda out=run_dir: train(settings(out, curriculum, KILLED)), kill_at, torn)
            resumable = assert_consistent(run_dir, reference)
            recover(run_dir, curriculum, resumable)
            assert rows(run_dir) == reference
            assert_no_temporaries(run_dir)
        except Exception as exc:
            failures.append(f"kill at {what}: {type(exc).__name__}: {exc}")
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not failures, "\n".join(failures)


def test_kill_at_every_step_of_opening_a_run_for_resume(setup):
    """A run killed between writing step-4 and pointing `latest` at it (latest still names step 2)
    holds log rows past its checkpoint; killing its resume anywhere must lose nothing."""
    root, curriculum, reference = setup
    base = root / "base"
    save_events = record(root / "probe", lambda: train(settings(root / "probe", curriculum, KILLED)))
    latest_move = [i for i, (c, p, _) in enumerate(save_events, start=1) if c == "replace" and p.endswith("latest")]
    run_killed(base, lambda: train(settings(base, curriculum, KILLED)), latest_move[-1], torn=False)
    assert ckpt.resolve_checkpoint(base).name == "step-00000002" and (base / "checkpoints" / "step-00000004").is_dir()
    # Rows a later, interrupted part of the run wrote past the checkpoint, in every log the resume trims.
    (base / "samples.jsonl").write_text('{"step": 2, "prompt": "a"}\n{"step": 4, "prompt": "b"}\n')
    (base / "task_accuracy.csv").write_text("step,stage,task,difficulty,accuracy\n2,first,add,1.0,0.5\n"
                                            "4,first,add,1.0,0.75\n4,first,sub,1.0,0.2")

    def resume(run_dir: Path):  # keeping one periodic checkpoint, the resume replaces the orphaned step-4
        return lambda: train(resume_settings(run_dir, {"max_steps": TOTAL, "keep_checkpoints": 1}))

    clean = root / "clean-resume"
    shutil.copytree(base, clean)
    events = record(clean, resume(clean))
    assert rows(clean) == reference
    described = describe(events)
    for step in ("metrics.csv.tmp -> metrics.csv", "task_accuracy.csv.tmp -> task_accuracy.csv",
                 "samples.jsonl.tmp -> samples.jsonl", "checkpoints/step-00000004 -> checkpoints/.old-step-00000004-"):
        assert step in described, f"no hooked call for {step}: {described}"
    first_save = next(i for i, (_, p, _) in enumerate(events) if "-> checkpoints/latest" in p)
    failures = []
    for kill_at, torn, what in kill_points(events[: first_save + 1]):  # opening, trims, best, step 4
        run_dir = root / f"resume-{kill_at}-{int(torn)}"
        shutil.copytree(base, run_dir)
        try:
            run_killed(run_dir, resume(run_dir), kill_at, torn)
            assert assert_consistent(run_dir, reference)
            resume(run_dir)()
            assert rows(run_dir) == reference
            assert [line[:11] for line in (run_dir / "samples.jsonl").read_text().splitlines()] == ['{"step": 2,']
            assert (run_dir / "task_accuracy.csv").read_text().splitlines()[1:] == ["2,first,add,1.0,0.5"]
            assert_no_temporaries(run_dir)
        except Exception as exc:
            failures.append(f"kill at {what}: {type(exc).__name__}: {exc}")
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not failures, "\n".join(failures)


def stage_outputs(run_dir: Path) -> tuple[list[str], list[str]]:
    """The samples (step and prompt) and task-accuracy rows a run wrote."""
    samples = [json.dumps([r["step"], r["prompt"], r["completion"]])
               for r in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())]
    return samples, (run_dir / "task_accuracy.csv").read_text().splitlines()


def test_kill_between_a_stage_end_checkpoint_and_its_outputs_loses_nothing(setup):
    """Samples and task accuracy at a stage end survive a kill anywhere around the stage-end checkpoint,
    including the moment the outputs begin: the resumed run holds the same rows as an uninterrupted one."""
    root, _, _ = setup
    curriculum = write_curriculum(root, first=3, second=3, eval_interval=3)

    def staged(out: Path, max_steps: int = TOTAL, resume: bool = False):
        if resume:
            return train(resume_settings(out, {"max_steps": max_steps}))
        return train(tiny_settings(out, curriculum, max_steps=max_steps, save_interval=2, keep_checkpoints=0,
                                   task_samples=1, sample_tokens=4))

    reference = root / "staged-reference"
    staged(reference)
    expected = stage_outputs(reference)
    assert {json.loads(s)[0] for s in expected[0]} == {3, 6} and len(expected[1]) > 2
    clean = root / "staged-clean"
    events = record(clean, lambda: staged(clean))
    # The stage-end checkpoint coming into place, `latest` moving to it, and the first call after that.
    renamed = next(i for i, (c, p, _) in enumerate(events, start=1) if c == "rename" and p.endswith("stage-0-end"))
    moved = next(i for i, (c, p, _) in enumerate(events, start=1) if i > renamed and p.endswith("latest"))
    points = [(i, False, f"{events[i - 1][0]} {events[i - 1][1]}") for i in (renamed, moved, moved + 1)]
    points.append((None, False, "the start of the stage's outputs"))
    failures = []
    for kill_at, torn, what in points:
        run_dir = root / f"stage-{kill_at}"
        try:
            if kill_at is None:
                run_killed_at_outputs(run_dir, lambda out=run_dir: staged(out))
            else:
                run_killed(run_dir, lambda out=run_dir: staged(out), kill_at, torn)
            staged(run_dir, resume=ckpt.has_complete_checkpoint(run_dir))
            assert stage_outputs(run_dir) == expected
        except Exception as exc:
            failures.append(f"kill at {what}: {type(exc).__name__}: {exc}")
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not failures, "\n".join(failures)


def run_killed_at_outputs(root: Path, run) -> None:
    """`run()` in a forked child that dies (like SIGKILL) when the first stage's outputs begin."""
    pid = os.fork()
    if pid == 0:
        TrainEvaluator.write_stage_outputs = lambda *args, **kwargs: os._exit(137)
        try:
            run()
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 137


def test_kill_a_tournament_while_it_records_a_run_then_rerun(setup):
    """A tournament killed while it writes a run's plan.json or its finished marker reruns to the same report."""
    root, _, _ = setup
    spec_path = write_tiny_tournament(root, name="faults")

    def tournament(out: Path) -> dict:
        report = write_report(run_tournament(load_spec(spec_path), out, say=lambda _: None), out)
        return {e["name"]: (e["tokens"], e["val_loss"], e["skipped_steps"]) for e in report["entrants"]}

    clean = root / "tournament-clean"
    events = record(clean, lambda: tournament(clean))
    expected = tournament(clean)  # a rerun of a finished tournament reads the same
    writes = [i for i, (_, p, _) in enumerate(events, start=1)
              if p.startswith("round-1/dense/seed-3/") and ("plan.json" in p or "tournament.json" in p)]
    first = sorted(set(writes) | {i + 1 for i in writes if events[i - 1][0] == "replace"})  # and the folder's fsync
    assert len(first) == 6, describe(events)
    failures = []
    for kill_at, torn, what in kill_points(events[: first[-1]]):
        if kill_at not in first:
            continue
        out = root / f"tournament-{kill_at}-{int(torn)}"
        try:
            run_killed(out, lambda out=out: tournament(out), kill_at, torn)
            assert tournament(out) == expected
        except Exception as exc:
            failures.append(f"kill at {what}: {type(exc).__name__}: {exc}")
        shutil.rmtree(out, ignore_errors=True)
    assert not failures, "\n".join(failures)
