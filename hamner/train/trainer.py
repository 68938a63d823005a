"""The training loop: one optimizer step after another, driven by the curriculum controller.

This module only wires the parts together. Their homes: settings (settings), checks of what a
run is built from (startup), the step (step), resumable state (state), metrics between rows
(metrics), validation / samples / task accuracy / probe (evaluation), reporting (loggers), the
run's record (run_record), checkpoints (hamner.run.checkpoint), run outputs (hamner.run.directory),
ranks (distributed), document packing (hamner.model.packing).

- each stage trains with its own recipe (batch size, gradient accumulation, sequence length: the
  stage's, else the curriculum's, else the preset's; the command line overrides all); a stage's seq_len
  ramp changes the rows' length step by step at a fixed batch size, so the tokens counted per step (and the
  FLOPs per token of the MFU) follow the batches actually trained on; ramped model knobs (the attention
  window) are set before every step;
- the curriculum's evaluations run at their intervals (and at step 0 when they ask), feed the
  controller's keep_best / early-stop metrics and are written to RUN/evals/; with
  save_initial_checkpoint the untrained model is saved as checkpoints/initial;

- bf16 autocast (fp16 with a gradient scaler, or plain fp32), gradient accumulation, clipping at 1.0;
- no host synchronisation per step: losses, gradient norms and the non-finite counters stay on the
  device and are read at log intervals (and before checkpoints and stage ends);
- a non-finite loss skips the update (without a host sync off the CPU; see hamner.train.optim.step_if_finite)
  and is counted; `max_bad_steps` in a row stop the run, keeping the last good checkpoint;
- SIGINT / SIGTERM finish the step, save a checkpoint and return normally, and so does reaching the
  time budget (hamner.train.curriculum.budget), whose time used carries over a resume;
- batches are prefetched in a background thread; the mixture for step t is a function of t, so a
  resumed run sees exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hamner.data.loader import Prefetcher
from hamner.data.mixture import MixtureSampler, open_sources
from hamner.errors import CheckpointError, TrainError
from hamner.eval.loss import token_byte_lengths
from hamner.eval.probe import format_probe, load_probe
from hamner.eval.tasks import format_table
from hamner.run import checkpoint as ckpt
from hamner.run.directory import RunDir, checkpoints_dir
from hamner.train import distributed as dist
from hamner.train.curriculum.budget import TimeBudget, format_duration
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import Curriculum, Evaluation, Stage
from hamner.train.evaluation import EvalRecord, EvalSummary, TrainEvaluator
from hamner.train.loggers import ReportError, open_loggers
from hamner.train.metrics import DeviceWindow, MetricsWindow, format_row
from hamner.train.optim import BETAS, WEIGHT_DECAY, apply_lr, stage_optimizer
from hamner.train.run_record import fresh_record, new_run_id
from hamner.train.settings import RunSettings, TrainSettings, resolve_run, stage_recipe
from hamner.train.signals import StopSignals, deferred_interrupts
from hamner.train.startup import (
    check_same_model,
    checked_model,
    checked_model_config,
    checked_tokenizer,
    configure_torch,
    curriculum_batches,
    load_init_weights,
    open_run_dir,
    validation_sources,
)
from hamner.train.state import OptimizerSlot, Progress, RngState, TrainState
from hamner.train.step import MAX_GRAD_NORM, train_step
from hamner.train.throughput import IntervalMeter, peak_flops


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    reason: str  # "finished", "max_steps", "signal", "time_budget", "non_finite"
    losses: list[float] = field(default_factory=list)  # every logged-window mean, for callers and tests
    task_accuracy: dict[str, dict[float, float]] = field(default_factory=dict)
    skipped_steps: int = 0  # updates skipped for a non-finite loss, over the whole run


def train(settings: TrainSettings, clock: Callable[[], float] = time.perf_counter) -> TrainResult:
    """Run (or resume) one training run to its end; see the module docstring. `clock` (seconds) measures the
    run's elapsed time and its time budget."""
    resolved, curriculum, device = resolve_run(settings)
    info = dist.init_distributed(device.type)
    trainer = None
    try:
        trainer = Trainer(resolved, curriculum, info, dist.device_for(info, device), given=settings, clock=clock)
        result = trainer.run()
        dist.barrier(info)  # no rank leaves the process group while another still has work in flight
        return result
    finally:
        with deferred_interrupts():  # a second Ctrl-C here is raised after the cleanup, not lost in a finalizer
            if trainer is not None:
                trainer.close()
                # The trainer holds reference cycles: free it (and DDP's reducer with its gloo work) now,
                # while the process group and the interpreter are alive, not in the GC at exit.
                trainer = None
                gc.collect()
            dist.shutdown(info)


class Trainer:
    """One training run: built from resolved settings, then `run()` once."""

    def __init__(self, s: RunSettings, curriculum: Curriculum, info: dist.DistInfo, device: torch.device,
                 given: TrainSettings, clock: Callable[[], float] = time.perf_counter) -> None:
        self.s, self.curriculum, self.dist, self.device = s, curriculum, info, device
        self.clock = clock
        self.budget = TimeBudget(s.time_budget, clock) if s.time_budget is not None else None
        self.dtype = configure_torch(s, device)
        self.config, self.tokenizer = checked_tokenizer(checked_model_config(s, curriculum), s)
        # Data first: a missing source stops the run before anything is built or written.
        names = curriculum.sources()
        document_end = self.tokenizer.eos_id if curriculum.packing == "document" else None
        self.sampler = MixtureSampler(open_sources(names, s.data, self.tokenizer), seed=s.seed,
                                      rank=info.rank, world_size=info.world_size,
                                      assistant_only=curriculum.assistant_only_sources(), document_end=document_end)
        validation, self._notes = validation_sources(names, s.data, self.tokenizer)
        probe = load_probe(curriculum.probe) if curriculum.probe else None
        self.rundir = RunDir(Path(s.out), enabled=info.is_main, probe=probe is not None)  # no disk until opened

        torch.manual_seed(s.seed)
        self.model = checked_model(self.config, curriculum, device)
        self.controller = CurriculumController(curriculum, n_layers=self.config.n_layers)
        # the current stage's optimizer(s), also after a restore and at a stage that asks for fresh ones
        self.optim = OptimizerSlot(lambda: stage_optimizer(self.model, self._stage(), device, s.optimizer))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.progress = Progress()
        self.window = DeviceWindow(device)
        self.metrics = MetricsWindow()
        # UTF-8 bytes per token id, when the curriculum reports bits per byte (the bpc column)
        self._token_bytes = (torch.from_numpy(token_byte_lengths(self.tokenizer)).to(device)
                             if curriculum.bits_per_byte else None)
        self.state = TrainState()  # everything a resumed run needs besides the weights
        for name, part in (("progress", self.progress), ("controller", self.controller), ("optimizer", self.optim),
                           ("scaler", self.scaler), ("sampler", self.sampler), ("metrics", self.metrics),
                           ("rng", RngState(device))):
            self.state.register(name, part)
        self.evaluator = TrainEvaluator(self.model, self.tokenizer, curriculum, validation, s, self.dtype, info,
                                        device, probe=probe, document_end=document_end)
        self.evaluations = curriculum.scheduled_evaluations()
        self.records = EvalRecord(Path(s.out), enabled=info.is_main)
        # Micro-batch j of step t is drawn as number t * stride + j (see curriculum_batches).
        self.micro_stride = max(stage_recipe(s, stage).grad_accum for stage in curriculum.stages)
        self.last_lr = 0.0
        self._last_tasks: tuple[int, dict[str, dict[float, float]]] | None = None  # (step, results)
        self._last_stage_end: dict[str, Any] | None = None  # the latest stage end, for evals/metadata.json
        self._bar = tqdm(disable=True)  # the real bar exists inside run()
        self._batches: Prefetcher | None = None

        try:  # the run directory is locked from here on: release it if the start fails
            record = self._restore(Path(s.resume)) if s.resume else self._start_fresh(given)
            self.loggers = open_loggers(list(s.report_to), self.rundir, self.progress.step,
                                        record.get("run_id") or new_run_id(), record)
        except ReportError as exc:
            self.rundir.close()
            raise TrainError(str(exc)) from None
        except BaseException:
            self.rundir.close()
            raise
        self.train_model = dist.wrap_model(self.model, info, device)
        if s.compile:
            self.train_model = torch.compile(self.train_model)
        self.recipe = stage_recipe(s, self._stage())
        self._seq_len = self.recipe.seq_len  # tokens per row of the latest step (a seq_len ramp moves it)
        self.meter = IntervalMeter(self.model.flops_per_token(self.recipe.seq_len), peak_flops(device))

    # ----- setup -----

    def _start_fresh(self, given: TrainSettings) -> dict[str, Any]:
        """Initial weights and stage; config.json and the curriculum copy. Returns the run's record."""
        s = self.s
        if s.init_from:
            load_init_weights(self.model, s.init_from, self.config, self.tokenizer, s.preset)
        open_run_dir(self.rundir, self.dist, resume=False, notes=self._notes)  # the run's first write
        self.rundir.resume_at(0)  # a fresh run in a reused directory starts clean logs
        if s.init_from:
            self.rundir.log(f"initialised from {s.init_from}")
        for _ in range(s.stage):
            self.controller.advance()
        self.optim.rebuild()  # of the starting stage's kind
        self.records.resume_at(-1)
        if not self.rundir.enabled:
            return {}
        record = fresh_record(self.rundir.path, asdict(given), asdict(s), self.curriculum, self.model,
                              self.evaluator.difficulty, self.dist.world_size, str(self.device),
                              str(self.dtype).removeprefix("torch."))
        self.rundir.write_config(record)
        self.records.write_metadata(self._metadata(record))
        optimizer = s.optimizer or self._stage().optimizer
        self.rundir.log(f"start: preset {s.preset}, {self.model.describe_parameters()}, curriculum "
                        f"{record['curriculum']}, optimizer {optimizer}, device {record['device']}, "
                        f"dtype {self.dtype}, world {record['world_size']}")
        return record

    def _restore(self, run_dir: Path) -> dict[str, Any]:
        """Weights and every registered part from the latest checkpoint. Returns the run's record."""
        open_run_dir(self.rundir, self.dist, resume=True, notes=self._notes)
        try:
            target, note = ckpt.resume_target(run_dir)
        except CheckpointError as exc:
            raise TrainError(f"cannot resume: {exc}") from None
        if note:
            self._say(f"note: {note}")
            if self.dist.is_main:
                ckpt.repoint_latest(run_dir, target.name)
        meta = ckpt.read_meta(target)
        check_same_model(meta["model"], self.config, run_dir, self.s.preset)
        state = ckpt.load_trainer_state(target)
        ckpt.load_weights(self.model, target, device=self.device)
        try:
            self.state.load_state_dict(state)
        except (CheckpointError, ValueError, KeyError) as exc:  # ValueError: torch's optimizer state checks
            raise TrainError(f"cannot resume {run_dir}: {exc}") from None
        ckpt.upgrade_optimizer_state(self.model, self.optim.optimizers, meta.get("version", 1))
        if meta.get("version", 1) < ckpt.VERSION:
            self._say(f"note: {target.name} is a format {meta.get('version', 1)} checkpoint; it was read without "
                      f"running code and the next checkpoint is written in format {ckpt.VERSION}")
        if self.controller.finished:
            raise TrainError(f"{run_dir} has already finished its curriculum; nothing to resume")
        if self.s.max_steps is not None and self.progress.step >= self.s.max_steps:
            raise TrainError(f"{run_dir} already reached step {self.progress.step} (--max-steps {self.s.max_steps}); "
                             "give a larger --max-steps to continue it")
        if self.budget is not None and self.progress.elapsed >= self.budget.seconds:
            raise TrainError(f"{run_dir} already used {self.progress.elapsed:.0f}s of its time budget "
                             f"{format_duration(self.budget.seconds)}; give a larger --time-budget to continue it")
        self.rundir.resume_at(self.progress.step)
        self.records.resume_at(self.progress.step)
        self.rundir.log(f"resumed from {target} at step {self.progress.step}")
        return self.rundir.read_config() if self.rundir.enabled else {}

    # ----- the loop -----

    def run(self) -> TrainResult:
        """Train until the curriculum ends, max_steps is reached, a signal arrives or losses go bad."""
        s = self.s
        self._bar = tqdm(total=s.max_steps, initial=self.progress.step, disable=not self.dist.is_main or None,
                         dynamic_ncols=True, leave=False)
        self.model.train()
        self._enter_stage()
        if self.progress.step == 0:
            self._at_start()
        started = self.clock() - self.progress.elapsed
        if self.budget is not None:
            self.budget.start(self.progress.elapsed)
        reason = "finished"
        with StopSignals() as stop, self._bar:
            while not self.controller.finished:
                if s.max_steps is not None and self.progress.step >= s.max_steps:
                    reason = "max_steps"
                    break
                self._train_step()
                self.progress.elapsed = self.clock() - started
                self._bar.update(1)
                out_of_time = self._budget_step()
                if self._after_step() == "non_finite":
                    reason = "non_finite"
                    break
                if out_of_time and not self.controller.finished:
                    self._drain()
                    if self.metrics.pending:  # the last row, with the rate the schedule ended at
                        self._write_metrics(None)
                    self._save([ckpt.step_name(self.progress.step)])
                    self._say(f"time budget {format_duration(self.budget.seconds)} reached at step "
                              f"{self.progress.step}; checkpoint saved, resume with --resume {self.rundir.path} "
                              "--time-budget LONGER")
                    reason = "time_budget"
                    break
                if dist.any_rank(stop.received is not None, self.dist):
                    self._drain()
                    self._save([ckpt.step_name(self.progress.step)])
                    self._say(f"stopped by {stop.received or 'a signal on another rank'} at step "
                              f"{self.progress.step}; checkpoint saved, resume with --resume {self.rundir.path}")
                    reason = "signal"
                    break
        final_tasks = self._finish() if reason in ("finished", "max_steps") else {}
        self._record_results(reason)
        return TrainResult(self.rundir.path, self.progress.step, reason, losses=self.metrics.logged,
                           task_accuracy=final_tasks, skipped_steps=self.metrics.bad_total)

    def _budget_step(self) -> bool:
        """After a step: tell the controller how many steps the time budget leaves (the same number on
        every rank, so they all apply the same learning rate); whether the budget is spent (on any rank)."""
        if self.budget is None:
            return False
        self.budget.step_done()
        self.controller.fit_to(dist.min_over_ranks(self.budget.steps_left(), self.dist))
        return dist.any_rank(self.budget.expired(), self.dist)

    def _enter_stage(self) -> None:
        """Begin training the current stage, at the start of `run()` (also after a resume) and after each
        advance: its batches (a prefetcher from the current step on, over a frozen view of the
        controller) and its model knobs."""
        if self._batches is not None:
            self._batches.close()
        self.recipe = stage_recipe(self.s, self._stage())
        self._seq_len = self.recipe.seq_len
        self.meter.flops_per_token = self.model.flops_per_token(self.recipe.seq_len)
        self._batches = curriculum_batches(self.controller, self.sampler, self.recipe, self.micro_stride,
                                           self.progress.step, self.device)
        for name, value in self.controller.model_knobs().items():
            self.model.set_knob(name, value)

    def _train_step(self) -> None:
        rates = self.controller.rates()
        apply_lr(self.optim.optimizers, rates.adamw, rates.layer_scales, rates.muon, rates.embed, rates.head)
        self.last_lr = rates.adamw
        for name, value in self.controller.ramped_knobs().items():
            self.model.set_knob(name, value)
        batches = [self._batches.next() for _ in range(self.recipe.grad_accum)]
        seq_len = batches[0].idx.shape[1]  # the recipe's, or where the stage's seq_len ramp stands
        if seq_len != self._seq_len:
            self._seq_len = seq_len
            self.meter.flops_per_token = self.model.flops_per_token(seq_len)
        no_sync = self.train_model.no_sync if self.dist.enabled else None
        result = train_step(self._loss, [(b.idx, b.targets, b.segment_ids) for b in batches], self.optim.optimizers,
                            scaler=self.scaler, autocast_dtype=self.dtype, no_sync=no_sync)
        self.window.add(result)
        if self._token_bytes is not None:
            targets = torch.stack([b.targets for b in batches])
            counted = targets >= 0  # masked-out targets are IGNORE_INDEX
            self.window.add_text(torch.where(counted, self._token_bytes[targets.clamp(min=0)], 0).sum(), counted.sum())
        self.controller.step_done()
        self.progress.step += 1
        tokens = sum(b.idx.numel() for b in batches) * self.dist.world_size  # every rank's rows are alike
        self.progress.tokens += tokens
        self.meter.add_tokens(tokens)

    def _loss(self, idx: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
        """Mean loss of one micro-batch; its document ids (under document packing) keep attention inside
        each document."""
        return self.train_model(idx, targets, segment_ids=segment_ids)

    def _drain(self) -> None:
        """Read the device-side window (one sync) and feed the losses to the controller."""
        read = self.window.read(self.dist)
        if read is not None:
            strikes = self.controller.strikes
            self.controller.record_losses(read.losses)
            self.metrics.add(read)
            rule = None if self.controller.finished else self.controller.stage.plateau
            if rule is not None and self.controller.strikes != strikes:  # `hamner status` reads this line
                self.rundir.log(f"plateau strikes {self.controller.strikes}/{rule.strikes} in stage "
                                f"{self.controller.stage_index} at step {self.progress.step}")

    def _after_step(self) -> str | None:
        s, step = self.s, self.progress.step
        due = [e for e in self.evaluations if e.due(step, s.eval_interval)]
        if due or step % s.log_interval == 0:
            self._drain()
            if self.metrics.worst_streak >= s.max_bad_steps:
                self._say(f"error: {s.max_bad_steps} non-finite losses in a row (at step {step}, "
                          f"{self.metrics.bad_total} in all); stopping. The last good checkpoint is kept in "
                          f"{checkpoints_dir(self.rundir.path)}; lower --lr or check the data")
                return "non_finite"
            self._write_metrics(self._evaluate(due).metrics.get("val_loss") if due else None)
        if self.controller.should_advance():
            self._end_stage()
        elif step % s.save_interval == 0 and step != s.max_steps:  # the last step: _finish saves
            self._drain()
            self._save([ckpt.step_name(step)])
        return None

    def _write_metrics(self, val_loss: float | None) -> None:
        """One metrics row (every logger, train.log, console) for the steps read since the last row."""
        rate, mfu = self.meter.read()
        row = self.metrics.take_row(self.progress.step, self._stage().name, val_loss=val_loss, lr=self.last_lr,
                                    tokens=self.progress.tokens, tokens_per_s=rate, mfu=mfu,
                                    elapsed_s=round(self.progress.elapsed, 2))
        self.loggers.metrics(row)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        line = format_row(row, self.metrics.bad_total, self.model.expert_load(), peak)
        self.rundir.log(line)
        if self.dist.is_main:
            loss = row["loss"] if row["loss"] is not None else float("nan")
            self._bar.set_postfix_str(f"stage {row['stage']} loss {loss:.3f} {rate:,.0f} tok/s", refresh=False)
            tqdm.write(line)

    # ----- evaluation -----

    def _at_start(self) -> None:
        """Step 0 of a run: the initial checkpoint when the curriculum asks, and the evaluations marked at_start."""
        if self.curriculum.save_initial_checkpoint:
            self._save([ckpt.INITIAL])
        due = [e for e in self.evaluations if e.due(0, self.s.eval_interval)]
        if due:
            self._evaluate(due)

    def _evaluate(self, due: list[Evaluation]) -> EvalSummary:
        """The evaluations `due` now: logged, written to RUN/evals/, fed to the controller (a new best of the
        keep_best metric is saved as the best checkpoint)."""
        t0 = time.perf_counter()
        step, stage = self.progress.step, self._stage().name
        summary = self.evaluator.evaluate(due, step, stage)
        if summary.validation is not None:
            self.rundir.log(f"validation at step {step}: {summary.validation.describe()}")
            self.loggers.validation(step, summary.validation.loss, summary.validation.per_source)
        if set(summary.metrics) - {"val_loss", "val_bpc"}:
            self._say(f"evaluation at step {step}: {summary.describe()}")
        if summary.task_results:
            self.loggers.task_accuracy(step, stage, summary.task_results)
        for row in summary.details.get("probe", []):
            self.rundir.probe.write({"step": step, "stage": stage, **row})
        self.loggers.evaluation(step, stage, summary.metrics)
        self.records.add(summary)
        if self.controller.record_metrics(summary.metrics) and self.curriculum.keep_best:
            self._save([ckpt.BEST], trainer_state=False)
        self.meter.exclude(time.perf_counter() - t0)
        return summary

    def _metadata(self, record: dict[str, Any]) -> dict[str, Any]:
        """evals/metadata.json: the set-up a study needs to be read and repeated (results are added at the end)."""
        c, s = self.curriculum, self.s
        return {
            "curriculum": c.name, "description": c.description, "preset": s.preset, "model": record["model"],
            "parameters": record["parameters"], "seed": s.seed, "dtype": record["dtype"],
            "world_size": self.dist.world_size, "eval_interval": s.eval_interval,
            "evaluations": [asdict(e) for e in self.evaluations],
            "keep_best": asdict(c.keep_best) if c.keep_best else None,
            "save_initial_checkpoint": c.save_initial_checkpoint,
            "optimizer": {"name": s.optimizer or self._stage().optimizer, "betas": list(BETAS),
                          "weight_decay": WEIGHT_DECAY, "grad_clip": MAX_GRAD_NORM},
            "stages": [{"name": st.name, "lr": st.lr, "schedule": st.schedule, "warmup_steps": st.warmup_steps,
                        "min_lr_ratio": st.min_lr_ratio, "steps": st.steps or st.until_step or st.max_steps,
                        "early_stop": asdict(st.early_stop) if st.early_stop else None,
                        **asdict(stage_recipe(s, st)), "seq_len_start": st.seq_len_start,
                        "model_ramps": {name: list(ends) for name, ends in st.model_ramps.items()}}
                       for st in c.stages],
        }

    def _record_results(self, reason: str) -> None:
        """Add how the run ended and its best evaluation to evals/metadata.json."""
        path = self.records.folder / "metadata.json"
        if not self.dist.is_main or not path.is_file():
            return
        rule = self.controller.best_rule
        best = next((e for e in self.records.summaries if e["metrics"].get(rule.metric) == self.controller.best_value),
                    None)
        metadata = json.loads(path.read_text())
        metadata["results"] = {
            "reason": reason, "step": self.progress.step, "tokens": self.progress.tokens,
            "last_stage_end": self._last_stage_end,
            "best": {"metric": rule.metric, "mode": rule.mode, "value": self.controller.best_value,
                     "step": best["step"] if best else None, "metrics": best["metrics"] if best else None},
            "evaluations": len(self.records.summaries)}
        self.records.write_metadata(metadata)

    def _end_stage(self) -> None:
        """Samples, task accuracy and probe at a stage end, then its checkpoint, then the next stage."""
        t0 = time.perf_counter()
        finished = self.controller.stage_index
        name, reason = self.curriculum.stages[finished].name, str(self.controller.end_reason())
        self._drain()
        if self.metrics.pending:  # the stage's last row, so no row mixes two stages
            self._write_metrics(None)
        self.controller.advance()
        if self.controller.fresh_optimizer_needed:
            self.optim.rebuild()
        self._say(f"stage {finished} ({name}) ended at step {self.progress.step} ({reason})")
        self._last_stage_end = {"stage": name, "step": self.progress.step, "reason": reason}
        self.loggers.stage_end(self.progress.step, name, reason)
        # The outputs before the checkpoint: a kill between the two resumes from the checkpoint before and
        # redoes them (their rows past that step are trimmed), so a stage end never lacks its outputs.
        self._last_tasks = (self.progress.step, self._stage_outputs(name))
        self._save([ckpt.stage_end_name(finished)])
        if not self.controller.finished:
            self._enter_stage()
        self.meter.exclude(time.perf_counter() - t0)

    def _stage_outputs(self, stage: str) -> dict[str, dict[float, float]]:
        """Samples, task accuracy and probe (TrainEvaluator.write_stage_outputs); returns the accuracies."""
        results, probe = self.evaluator.write_stage_outputs(self.progress.step, stage, self.rundir, self.loggers)
        if probe:
            self._say(f"probe {self.curriculum.probe} at step {self.progress.step}:\n{format_probe(probe)}")
        return results

    def _finish(self) -> dict[str, dict[float, float]]:
        """The end of a run: samples, task accuracy, then a last checkpoint (unless a stage end just did all this)."""
        self._drain()
        if self.metrics.pending:
            self._write_metrics(None)
        step = self.progress.step
        if self._last_tasks is not None and self._last_tasks[0] == step:
            tasks = self._last_tasks[1]  # a stage just ended here and did all of this
        else:
            tasks = self._stage_outputs(self._stage().name)
            self._save([ckpt.step_name(step)])
        if tasks:
            self._say("exact-match accuracy on held-out synthetic tasks:\n" + format_table(tasks))
        self._say(f"done: {step} steps, {self.progress.tokens:,} tokens in {self.progress.elapsed:.0f}s; run "
                  f"directory {self.rundir.path}")
        return tasks

    # ----- checkpoints -----

    def _save(self, names: list[str], trainer_state: bool = True) -> None:
        """Write checkpoint `names` on rank 0 (the others wait), moving `latest` to it when it holds the trainer
        state; prune periodic ones and log it. A failed save is logged (if the disk allows) and raised."""
        if self.dist.is_main:
            meta = {"model": self.config.to_dict(), "curriculum": self.curriculum.name,
                    "step": self.progress.step, "stage": self.controller.stage_index, "tokens": self.progress.tokens,
                    "skipped_steps": self.metrics.bad_total}
            try:
                ckpt.save_checkpoint(self.rundir.path, names, self.model, meta,
                                     self.state.state_dict() if trainer_state else None, make_latest=trainer_state)
            except CheckpointError as exc:
                with contextlib.suppress(OSError):  # the disk may be full
                    self.rundir.log(f"error: {exc}")
                raise
            ckpt.prune_periodic(self.rundir.path, self.s.keep_checkpoints)
            self.rundir.log(f"checkpoint {', '.join(names)} at step {meta['step']}")
        dist.barrier(self.dist)

    def _stage(self) -> Stage:
        """The current stage; the last one once the curriculum is finished (the stage of the last step)."""
        return self.curriculum.stages[min(self.controller.stage_index, len(self.curriculum.stages) - 1)]

    def _say(self, message: str) -> None:
        self.rundir.log(message)
        if self.dist.is_main:
            tqdm.write(message)

    def close(self) -> None:
        """Stop the prefetch thread, close the loggers and release the run directory."""
        if self._batches is not None:
            self._batches.close()
        self.loggers.close()
        self.rundir.close()
