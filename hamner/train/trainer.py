"""The training loop: one optimizer step after another, driven by the curriculum controller.

This module only wires the parts together. Their homes: settings (settings), checks of what a
run is built from (startup), the step (step), resumable state (state), metrics between rows
(metrics), validation / samples / task accuracy / probe (evaluation), reporting (loggers), the
run's record (run_record), checkpoints (hamner.run.checkpoint), run outputs (hamner.run.directory),
ranks (distributed), document packing (hamner.model.packing).

- bf16 autocast (fp16 with a gradient scaler, or plain fp32), gradient accumulation, clipping at 1.0;
- no host synchronisation per step: losses, gradient norms and the non-finite counters stay on the
  device and are read at log intervals (and before checkpoints and stage ends);
- a non-finite loss skips the update (without a host sync off the CPU; see hamner.train.optim.step_if_finite)
  and is counted; `max_bad_steps` in a row stop the run, keeping the last good checkpoint;
- SIGINT / SIGTERM finish the step, save a checkpoint and return normally;
- batches are prefetched in a background thread; the mixture for step t is a function of t, so a
  resumed run sees exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hamner.data.loader import Prefetcher
from hamner.data.mixture import MixtureSampler, open_sources
from hamner.errors import CheckpointError, TrainError
from hamner.eval.probe import format_probe, load_probe
from hamner.eval.tasks import format_table
from hamner.run import checkpoint as ckpt
from hamner.run.directory import RunDir, checkpoints_dir
from hamner.train import distributed as dist
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import Curriculum, Stage
from hamner.train.evaluation import TrainEvaluator
from hamner.train.loggers import ReportError, open_loggers
from hamner.train.metrics import DeviceWindow, MetricsWindow, format_row
from hamner.train.optim import apply_lr, stage_optimizer
from hamner.train.run_record import fresh_record, new_run_id
from hamner.train.settings import RunSettings, TrainSettings, resolve_run
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
from hamner.train.step import train_step
from hamner.train.throughput import IntervalMeter, peak_flops


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    reason: str  # "finished", "max_steps", "signal", "non_finite"
    losses: list[float] = field(default_factory=list)  # every logged-window mean, for callers and tests
    task_accuracy: dict[str, dict[float, float]] = field(default_factory=dict)
    skipped_steps: int = 0  # updates skipped for a non-finite loss, over the whole run


def train(settings: TrainSettings) -> TrainResult:
    """Run (or resume) one training run to its end; see the module docstring."""
    resolved, curriculum, device = resolve_run(settings)
    info = dist.init_distributed(device.type)
    trainer = None
    try:
        trainer = Trainer(resolved, curriculum, info, dist.device_for(info, device), given=settings)
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
                 given: TrainSettings) -> None:
        self.s, self.curriculum, self.dist, self.device = s, curriculum, info, device
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
        self.state = TrainState()  # everything a resumed run needs besides the weights
        for name, part in (("progress", self.progress), ("controller", self.controller), ("optimizer", self.optim),
                           ("scaler", self.scaler), ("sampler", self.sampler), ("metrics", self.metrics),
                           ("rng", RngState(device))):
            self.state.register(name, part)
        self.evaluator = TrainEvaluator(self.model, self.tokenizer, curriculum, validation, s, self.dtype, info,
                                        device, probe=probe, document_end=document_end)
        self.last_lr = 0.0
        self._last_tasks: tuple[int, dict[str, dict[float, float]]] | None = None  # (step, results)
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
        self.tokens_per_step = s.batch_size * s.seq_len * s.grad_accum * info.world_size
        self.meter = IntervalMeter(self.model.flops_per_token(s.seq_len), peak_flops(device))

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
        if not self.rundir.enabled:
            return {}
        record = fresh_record(self.rundir.path, asdict(given), asdict(s), self.curriculum, self.model,
                              self.evaluator.difficulty, self.dist.world_size, str(self.device),
                              str(self.dtype).removeprefix("torch."))
        self.rundir.write_config(record)
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
        except (ValueError, KeyError) as exc:
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
        self.rundir.resume_at(self.progress.step)
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
        started = time.perf_counter() - self.progress.elapsed
        reason = "finished"
        with StopSignals() as stop, self._bar:
            while not self.controller.finished:
                if s.max_steps is not None and self.progress.step >= s.max_steps:
                    reason = "max_steps"
                    break
                self._train_step()
                self.progress.elapsed = time.perf_counter() - started
                self._bar.update(1)
                if self._after_step() == "non_finite":
                    reason = "non_finite"
                    break
                if dist.any_rank(stop.received is not None, self.dist):
                    self._drain()
                    self._save([ckpt.step_name(self.progress.step)])
                    self._say(f"stopped by {stop.received or 'a signal on another rank'} at step "
                              f"{self.progress.step}; checkpoint saved, resume with --resume {self.rundir.path}")
                    reason = "signal"
                    break
        final_tasks = self._finish() if reason in ("finished", "max_steps") else {}
        return TrainResult(self.rundir.path, self.progress.step, reason, losses=self.metrics.logged,
                           task_accuracy=final_tasks, skipped_steps=self.metrics.bad_total)

    def _enter_stage(self) -> None:
        """Begin training the current stage, at the start of `run()` (also after a resume) and after each
        advance: its batches (a prefetcher from the current step on, over a frozen view of the
        controller) and its model knobs."""
        if self._batches is not None:
            self._batches.close()
        self._batches = curriculum_batches(self.controller, self.sampler, self.s, self.progress.step, self.device)
        for name, value in self.controller.model_knobs().items():
            self.model.set_knob(name, value)

    def _train_step(self) -> None:
        rates = self.controller.rates()
        apply_lr(self.optim.optimizers, rates.adamw, rates.layer_scales, rates.muon)
        self.last_lr = rates.adamw
        batches = [self._batches.next() for _ in range(self.s.grad_accum)]
        no_sync = self.train_model.no_sync if self.dist.enabled else None
        result = train_step(self._loss, [(b.idx, b.targets, b.segment_ids) for b in batches], self.optim.optimizers,
                            scaler=self.scaler, autocast_dtype=self.dtype, no_sync=no_sync)
        self.window.add(result)
        self.controller.step_done()
        self.progress.step += 1
        self.progress.tokens += self.tokens_per_step
        self.meter.add_tokens(self.tokens_per_step)

    def _loss(self, idx: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
        """Mean loss of one micro-batch; its document ids (under document packing) keep attention inside
        each document."""
        return self.train_model(idx, targets, segment_ids=segment_ids)

    def _drain(self) -> None:
        """Read the device-side window (one sync) and feed the losses to the controller."""
        read = self.window.read(self.dist)
        if read is not None:
            self.controller.record_losses(read.losses)
            self.metrics.add(read)

    def _after_step(self) -> str | None:
        s, step = self.s, self.progress.step
        eval_now = step % s.eval_interval == 0
        if eval_now or step % s.log_interval == 0:
            self._drain()
            if self.metrics.worst_streak >= s.max_bad_steps:
                self._say(f"error: {s.max_bad_steps} non-finite losses in a row (at step {step}, "
                          f"{self.metrics.bad_total} in all); stopping. The last good checkpoint is kept in "
                          f"{checkpoints_dir(self.rundir.path)}; lower --lr or check the data")
                return "non_finite"
            self._write_metrics(self._validate() if eval_now and self.evaluator.sources else None)
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
        line = format_row(row, self.metrics.bad_total, self.model.expert_load())
        self.rundir.log(line)
        if self.dist.is_main:
            loss = row["loss"] if row["loss"] is not None else float("nan")
            self._bar.set_postfix_str(f"stage {row['stage']} loss {loss:.3f} {rate:,.0f} tok/s", refresh=False)
            tqdm.write(line)

    # ----- evaluation -----

    def _validate(self) -> float:
        """Validation loss, fed to the controller; a new best is saved when the curriculum keeps it."""
        t0 = time.perf_counter()
        result = self.evaluator.validate()
        self.rundir.log(f"validation at step {self.progress.step}: {result.describe()}")
        self.loggers.validation(self.progress.step, result.loss, result.per_source)
        if self.controller.record_val_loss(result.loss) and self.curriculum.keep_best:
            self._save([ckpt.BEST], trainer_state=False)
        self.meter.exclude(time.perf_counter() - t0)
        return result.loss

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
