"""The training loop: one optimizer step after another, driven by the curriculum controller.

What lives elsewhere: settings (hamner.train_settings), the model (hamner.model), parallelism
(hamner.distributed), the optimizer (hamner.optim), checkpoints (hamner.checkpoint), run outputs
(hamner.run_dir), data (data.*). This module wires them together and owns the step:

- bf16 autocast (fp16 with a gradient scaler, or plain fp32), gradient accumulation, clipping at 1.0;
- no host synchronisation per step: losses, gradient norms and the non-finite counters stay on the
  device and are read at log intervals (and before checkpoints and stage ends);
- a non-finite loss skips the update (on CUDA through the fused AdamW's found_inf input and Muon's
  restore-where-bad, so without a sync; see hamner.optim.step_if_finite) and is counted; `max_bad_steps` in a row stop the run, keeping the last good checkpoint;
- SIGINT / SIGTERM finish the step, save a checkpoint and return normally;
- batches are prefetched in a background thread; the mixture for step t is a function of t, so a
  resumed run sees exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hamner.data import chat_format
from hamner.data.errors import DataError
from hamner.data.loader import Prefetcher
from hamner.data.mixture import MixtureSampler, open_sources, open_validation
from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner import checkpoint as ckpt
from hamner import distributed as dist
from hamner.config import HamnerConfig, model_config
from hamner.controller import CurriculumController
from hamner.curriculum import Curriculum, is_synthetic_source, load_curriculum
from hamner.eval_loss import utf8_bytes
from hamner.generate import generate
from hamner.model import HamnerModel
from hamner.optim import Optimizer, apply_lr, build_optimizer, load_state, step_if_finite
from hamner.run_dir import RunDir
from hamner.task_accuracy import format_table, held_out_seed, task_accuracy
from hamner.throughput import IntervalMeter, peak_flops
from hamner.train_settings import DTYPES, TrainError, TrainSettings, fill_defaults, pick_device, validate

# Fixed prompts generated at every stage end, so samples.jsonl shows the same questions over time.
SAMPLE_PROMPTS: tuple[str, ...] = (
    "Once upon a time",
    chat_format.prompt_for_reply([{"role": "user", "content": "Tell me a short story about a cat."}]),
    "Calculate: 3 + 4 =",
)
# Seed of the validation rows drawn from built-in generators: at least 2**32, so never one of the
# 32-bit seeds the training sampler draws per (seed, step, rank, source).
VALIDATION_SEED = held_out_seed(0)
# Seed of the held-out synthetic samples scored for task accuracy (task_accuracy lifts it past 2**32).
TASK_EVAL_SEED = 1


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    reason: str  # "finished", "max_steps", "signal", "non_finite"
    losses: list[float] = field(default_factory=list)  # every logged-window mean, for callers and tests
    task_accuracy: dict[str, dict[float, float]] = field(default_factory=dict)


def train(settings: TrainSettings) -> TrainResult:
    """Run (or resume) one training run to its end; see the module docstring."""
    validate(settings)
    settings = fill_defaults(settings)
    device = pick_device(settings.device)
    info = dist.init_distributed(device.type)
    trainer = None
    try:
        trainer = Trainer(settings, info, dist.device_for(info, device))
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        dist.shutdown(info)


class Trainer:
    """One training run: built from settings, then `run()` once."""

    def __init__(self, s: TrainSettings, info: dist.DistInfo, device: torch.device) -> None:
        self.s = s
        self.dist = info
        self.device = device
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        self.dtype = DTYPES[s.dtype or ("bf16" if self.device.type == "cuda" else "fp32")]
        if self.dtype == torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainError("this GPU has no bf16 support; use --dtype fp16 or fp32")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

        self.curriculum = self._load_curriculum()
        self.config = self._model_config()
        self.tokenizer = self._load_tokenizer()
        # Data first: a missing source stops the run before anything is built or written.
        names = self.curriculum.sources()
        self.sampler = MixtureSampler(open_sources(names, s.data, self.tokenizer), seed=s.seed,
                                      rank=self.dist.rank, world_size=self.dist.world_size)
        self.validation, notes = self._open_validation(names)
        run_path = self._run_path()
        if not s.resume and ckpt.checkpoints_dir(run_path).is_dir():
            raise TrainError(f"{run_path} already holds checkpoints; resume it with --resume {run_path} "
                             "or pick another --out")
        self.rundir = RunDir(run_path, enabled=self.dist.is_main)
        for note in notes:
            self.rundir.log(note)

        torch.manual_seed(s.seed)
        self.model = HamnerModel(self.config).to(self.device)
        self.controller = CurriculumController(self.curriculum, n_layers=self.config.n_layers)
        self.lr_factor = 1.0 if s.lr is None else s.lr / self.curriculum.stages[0].lr
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.bad_total = 0
        self.worst_streak = 0  # longest run of non-finite losses seen
        self.pending: dict[str, list[float]] = {"loss": [], "grad_norm": []}
        self.logged: list[float] = []
        self.best_val: float | None = None
        self.last_lr = 0.0
        self.final_tasks: dict[str, dict[float, float]] = {}
        self._last_tasks: tuple[int, dict[str, dict[float, float]]] | None = None  # (step, results)
        self._stop_signal: str | None = None
        self._bar: tqdm | _NullBar = _NullBar()
        self._batches: Prefetcher | None = None
        self._reset_device_window()

        if s.resume:
            self._restore(Path(s.resume))
        else:
            self._start_fresh()
        self.train_model = dist.wrap_model(self.model, self.dist, self.device)
        if s.compile:
            self.train_model = torch.compile(self.train_model)
        self.tokens_per_step = s.batch_size * s.seq_len * s.grad_accum * self.dist.world_size
        self.meter = IntervalMeter(self.model.flops_per_token(s.seq_len), peak_flops(self.device))

    # ----- setup -----

    def _load_curriculum(self) -> Curriculum:
        try:
            return load_curriculum(self.s.curriculum)
        except ValueError as exc:
            raise TrainError(str(exc)) from None

    def _model_config(self) -> HamnerConfig:
        s = self.s
        try:
            config = model_config(s.preset)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        if s.tokenizer is not None:  # a file is recorded by absolute path, so checkpoints find it anywhere
            config.tokenizer = str(Path(s.tokenizer).resolve()) if Path(s.tokenizer).exists() else s.tokenizer
        if self.curriculum.tokenizer is not None and self.curriculum.tokenizer != config.tokenizer:
            raise TrainError(f"curriculum {self.curriculum.name!r} needs the {self.curriculum.tokenizer!r} tokenizer "
                             f"but preset {s.preset!r} uses {config.tokenizer!r}; pick a preset built for it")
        if s.seq_len > config.max_seq_len:
            raise TrainError(f"--seq-len {s.seq_len} exceeds the context of preset {s.preset!r} "
                             f"({config.max_seq_len} tokens)")
        if s.init_from and not Path(s.init_from).exists():
            raise TrainError(f"--init-from {s.init_from}: no checkpoint at {s.init_from}")
        if self.curriculum.requires_init and not (s.init_from or s.resume):
            raise TrainError(f"curriculum {self.curriculum.name!r} continues a trained model: "
                             "give --init-from CHECKPOINT")
        if s.stage is not None and s.stage >= len(self.curriculum.stages):
            raise TrainError(f"--stage {s.stage} does not exist: curriculum {self.curriculum.name!r} has "
                             f"stages 0..{len(self.curriculum.stages) - 1}")
        return config

    def _load_tokenizer(self) -> Tokenizer:
        tokenizer = load_tokenizer(self.config.tokenizer)
        if tokenizer.vocab_size > self.config.vocab_size:
            raise TrainError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model "
                             f"only {self.config.vocab_size}")
        return tokenizer

    def _run_path(self) -> Path:
        if self.s.out:
            return Path(self.s.out)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{self.s.preset}-{stamp}"

    def _open_validation(self, names: list[str]) -> tuple[dict, list[str]]:
        """Validation sources (a shard source without a val split is left out, with a note why)."""
        sources, notes = {}, []
        for name in names:
            try:
                sources.update(open_validation([name], self.s.data, self.tokenizer))
            except DataError as exc:
                notes.append(f"no validation for {name}: {exc}")
        return sources, notes

    def _start_fresh(self) -> None:
        s = self.s
        self.rundir.resume_at(0)  # a fresh run in a reused directory starts clean CSVs
        if s.init_from:
            self._init_weights(s.init_from)
        for _ in range(s.stage or 0):
            self.controller.advance()
        self.optimizer = self._new_optimizer()
        self.rundir.write_config({
            "settings": asdict(s),
            "model": self.config.to_dict(),
            "curriculum": self.curriculum.name,
            "curriculum_path": str(self.curriculum.path),
            "parameters": self.model.num_parameters(),
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        })
        self.rundir.log(f"start: preset {s.preset}, {self.model.num_parameters():,} parameters, curriculum "
                     f"{self.curriculum.name}, optimizer {self._optimizer_kind()}, device {self.device}, dtype {self.dtype}, world {self.dist.world_size}")

    def _optimizer_kind(self) -> str:
        """The current stage's optimizer; --optimizer overrides the curriculum's."""
        return self.s.optimizer or self.controller.stage.optimizer

    def _new_optimizer(self) -> Optimizer:
        """A fresh optimizer of the current stage's kind (apply_lr sets its rates every step)."""
        return build_optimizer(self.model, self.controller.lr(), self.device, kind=self._optimizer_kind(),
                               muon_lr=self.controller.muon_lr())

    def _init_weights(self, path: str) -> None:
        source, config = ckpt.load_model(path)
        if config.to_dict() | {"tokenizer": None} != self.config.to_dict() | {"tokenizer": None}:
            raise TrainError(f"--init-from {path}: its model shape differs from preset {self.s.preset!r}")
        if config.tokenizer != self.config.tokenizer and \
                load_tokenizer(config.tokenizer).fingerprint != self.tokenizer.fingerprint:
            raise TrainError(f"--init-from {path}: it uses tokenizer {config.tokenizer!r}, a different vocabulary "
                             f"from {self.config.tokenizer!r}")
        self.model.load_state_dict(source.state_dict())
        self.rundir.log(f"initialised from {path}")

    def _restore(self, run_dir: Path) -> None:
        target = ckpt.resolve_checkpoint(run_dir)
        meta = ckpt.read_meta(target)
        if meta["model"] != self.config.to_dict():
            raise TrainError(f"cannot resume {run_dir}: its model config differs from preset {self.s.preset!r}")
        state = ckpt.load_trainer_state(target)
        ckpt.load_weights(self.model, target, device=self.device)
        try:
            self.controller.load_state_dict(state["controller"])
        except (ValueError, KeyError) as exc:
            raise TrainError(f"cannot resume {run_dir}: {exc}") from None
        if self.controller.finished:
            raise TrainError(f"{run_dir} has already finished its curriculum; nothing to resume")
        self.optimizer = self._new_optimizer()
        load_state(self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.bad_total, self.pending, self.best_val = state["bad_total"], state["pending"], state["best_val"]
        _set_rng_state(state["rng"], self.device)
        self.rundir.resume_at(self.step)
        self.rundir.log(f"resumed from {target} at step {self.step}")

    # ----- the loop -----

    def run(self) -> TrainResult:
        """Train until the curriculum ends, max_steps is reached, a signal arrives or losses go bad."""
        s = self.s
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._bar = tqdm(total=s.max_steps, initial=self.step, disable=not self.dist.is_main or None,
                         dynamic_ncols=True, leave=False)
        self.model.train()
        self._restart_batches()
        started = time.perf_counter() - self.elapsed
        reason = "finished"
        try:
            while True:
                if self.controller.finished:
                    break
                if s.max_steps is not None and self.step >= s.max_steps:
                    reason = "max_steps"
                    break
                self._train_step()
                self.elapsed = time.perf_counter() - started
                self._bar.update(1)
                if self._after_step() == "non_finite":
                    reason = "non_finite"
                    break
                if dist.any_rank(self._stop_signal is not None, self.dist):
                    self._drain()
                    self._save([ckpt.step_name(self.step)])
                    self._say(f"stopped by {self._stop_signal or 'a signal on another rank'} at step "
                              f"{self.step}; checkpoint saved, resume with --resume {self.rundir.path}")
                    reason = "signal"
                    break
        finally:
            self._bar.close()
            self._bar = _NullBar()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if reason in ("finished", "max_steps"):
            self._finish(reason)
        return TrainResult(self.rundir.path, self.step, reason, losses=self.logged, task_accuracy=self.final_tasks)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first signal asks to stop after this step; Ctrl-C twice stops at once. A SIGTERM
        after Ctrl-C (torchrun forwards one to its workers) does not cut the save short."""
        name = signal.Signals(signum).name
        if self._stop_signal == "SIGINT" and name == "SIGINT":
            signal.default_int_handler(signum, frame)
        self._stop_signal = self._stop_signal or name

    def _restart_batches(self) -> None:
        """(Re)start the prefetcher at the current step with a frozen view of the controller."""
        if self._batches is not None:
            self._batches.close()
        plan = copy.copy(self.controller)
        accum = self.s.grad_accum

        def make_batch(micro: int) -> np.ndarray:
            # The mixture of step t is read off a frozen copy of the controller (plain fields, no
            # losses needed), so it depends on t only and resumed runs draw the same rows.
            ahead = micro // accum - plan.global_step
            self.sampler.set_mixture(plan.weights(), plan.difficulty(steps_ahead=ahead))
            return self.sampler.batch(micro, self.s.batch_size, self.s.seq_len + 1)

        self._batches = Prefetcher(make_batch, start_step=self.step * accum, device=self.device)
        self.stage_scales = self.controller.layer_lr_scales()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _train_step(self) -> None:
        s = self.s
        self.last_lr = self.controller.lr() * self.lr_factor
        apply_lr(self.optimizer, self.last_lr, self.stage_scales, self.controller.muon_lr() * self.lr_factor)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(s.grad_accum):
            idx, targets = self._batches.next()
            last = micro == s.grad_accum - 1
            no_sync = self.train_model.no_sync() if self.dist.enabled and not last else contextlib.nullcontext()
            with no_sync:
                with self._autocast():
                    loss = self.train_model(idx, targets)
                self.scaler.scale(loss / s.grad_accum).backward()
            loss_sum += loss.detach().float()
        loss = loss_sum / s.grad_accum
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        # fp16: the scaler already skips steps whose gradients overflowed; only the loss counts as bad.
        finite = torch.isfinite(loss) if self.scaler.is_enabled() else torch.isfinite(loss) & torch.isfinite(grad_norm)
        self._optimizer_step(finite)
        self.optimizer.zero_grad(set_to_none=True)
        bad = ~finite
        self._bad_streak = torch.where(bad, self._bad_streak + 1, torch.zeros_like(self._bad_streak))
        self._max_streak = torch.maximum(self._max_streak, self._bad_streak)
        self._bad_count += bad.int()
        self._losses.append(loss)
        self._grad_norms.append(grad_norm.detach().float())
        self.controller.step_done()
        self.step += 1
        self.tokens += self.tokens_per_step
        self.meter.add_tokens(self.tokens_per_step)

    def _optimizer_step(self, finite: torch.Tensor) -> None:
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips steps whose gradients overflowed
            self.scaler.update()
        else:
            step_if_finite(self.optimizer, finite)

    def _reset_device_window(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._grad_norms: list[torch.Tensor] = []
        zero = torch.zeros((), dtype=torch.int32, device=self.device)
        self._bad_streak = getattr(self, "_bad_streak", zero)
        self._max_streak = self._bad_streak.clone()
        self._bad_count = zero.clone()

    def _drain(self) -> None:
        """Read the device-side window (one sync) and feed the controller; tracks the worst bad streak."""
        if not self._losses:
            return
        # Every rank must take the same decisions: mean losses, the worst bad streak of any rank.
        losses = dist.mean_over_ranks(torch.stack(self._losses), self.dist)
        counters = dist.max_over_ranks(torch.stack([self._max_streak, self._bad_count]), self.dist)
        packed = torch.cat([losses, torch.stack(self._grad_norms), counters.float()]).tolist()
        n = len(self._losses)
        loss_values, norms = packed[:n], packed[n:2 * n]
        max_streak, bad = int(packed[-2]), int(packed[-1])
        self.controller.record_losses(loss_values)
        self.pending["loss"] += loss_values
        self.pending["grad_norm"] += norms
        self.bad_total += bad
        self.worst_streak = max(self.worst_streak, max_streak)
        self._reset_device_window()

    def _after_step(self) -> str | None:
        s = self.s
        log_now = self.step % s.log_interval == 0
        eval_now = self.step % (s.eval_interval or self.curriculum.eval_interval) == 0
        if log_now or eval_now:
            self._drain()
            if self.worst_streak >= s.max_bad_steps:
                self._say(f"error: {s.max_bad_steps} non-finite losses in a row (at step {self.step}, "
                          f"{self.bad_total} in all); stopping. The last good checkpoint is kept in "
                          f"{ckpt.checkpoints_dir(self.rundir.path)}; lower --lr or check the data")
                return "non_finite"
            val_loss = self._validate() if eval_now and self.validation else None
            self._write_metrics(val_loss)
        if self.controller.should_advance():
            self._end_stage()
        elif self.step % s.save_interval == 0:
            self._drain()
            self._save([ckpt.step_name(self.step)])
        return None

    def _write_metrics(self, val_loss: float | None) -> None:
        """One metrics.csv row (and log line) for the steps drained since the last row."""
        losses = [v for v in self.pending["loss"] if math.isfinite(v)]
        norms = [v for v in self.pending["grad_norm"] if math.isfinite(v)]
        loss = sum(losses) / len(losses) if losses else None
        rate, mfu = self.meter.read()
        stage = self._stage_name()
        row = {"step": self.step, "stage": stage, "loss": loss, "val_loss": val_loss,
               "lr": self.last_lr,
               "grad_norm": sum(norms) / len(norms) if norms else None, "tokens": self.tokens,
               "tokens_per_s": rate, "mfu": mfu, "elapsed_s": round(self.elapsed, 2)}
        self.rundir.metrics.write(row)
        if loss is not None:
            self.logged.append(loss)
        self.pending = {"loss": [], "grad_norm": []}
        parts = [f"step {self.step}", f"stage {stage}", f"loss {loss:.4f}" if loss is not None else "loss nan"]
        if val_loss is not None:
            parts.append(f"val {val_loss:.4f}")
        parts += [f"lr {self.last_lr:.2e}", f"{rate:,.0f} tok/s"]
        if mfu is not None:
            parts.append(f"mfu {100 * mfu:.1f}%")
        if self.bad_total:
            parts.append(f"{self.bad_total} skipped")
        line = " | ".join(parts)
        self.rundir.log(line)
        if self.dist.is_main:
            self._bar.set_postfix_str(f"stage {stage} loss {loss or float('nan'):.3f} {rate:,.0f} tok/s", refresh=False)
            tqdm.write(line)

    # ----- evaluation -----

    @torch.no_grad()
    def _validate(self) -> float:
        """Mean loss over every validation source (held-out rows), fed to the controller."""
        t0 = time.perf_counter()
        s = self.s
        self.model.eval()
        per_source: dict[str, float] = {}
        bytes_per_token: list[float] = []
        difficulty = self.controller.difficulty() if not self.controller.finished else 1.0
        for name, source in sorted(self.validation.items()):
            rows = np.asarray(source.rows(s.batch_size * s.eval_batches, s.seq_len + 1, VALIDATION_SEED, difficulty),
                              dtype=np.int64)
            total = 0.0
            for batch in np.split(rows, s.eval_batches):
                w = torch.from_numpy(batch).to(self.device)
                with self._autocast():
                    total += float(self.model(w[:, :-1], w[:, 1:]))
            per_source[name] = total / s.eval_batches
            if self.curriculum.bits_per_byte:
                bytes_per_token.append(utf8_bytes(self.tokenizer, rows[:, 1:]) / rows[:, 1:].size)
        self.model.train()
        # Averaged over ranks so every rank takes the same best-checkpoint and early-stop decisions.
        mean = torch.tensor(sum(per_source.values()) / len(per_source), device=self.device)
        val_loss = float(dist.mean_over_ranks(mean, self.dist))
        detail = ", ".join(f"{n} {v:.4f}" for n, v in per_source.items())
        if bytes_per_token:
            bpb = val_loss / math.log(2) / (sum(bytes_per_token) / len(bytes_per_token))
            detail += f"; {bpb:.4f} bits per byte"
        self.rundir.log(f"validation at step {self.step}: {val_loss:.4f} ({detail})")
        if self.controller.record_val_loss(val_loss):
            self.best_val = val_loss
            self._save([ckpt.BEST], trainer_state=False)
        self.meter.exclude(time.perf_counter() - t0)
        return val_loss

    def _end_stage(self) -> None:
        """Checkpoint, samples and task accuracy at a stage end, then the next stage."""
        t0 = time.perf_counter()
        finished_stage = self.controller.stage_index
        reason = self.controller.end_reason()
        self._drain()
        if self.pending["loss"]:  # the stage's last row, so no row mixes two stages
            self._write_metrics(None)
        self.controller.advance()
        if self.controller.fresh_optimizer_needed:
            self.optimizer = self._new_optimizer()
        self._save([ckpt.stage_end_name(finished_stage)])
        self._say(f"stage {finished_stage} ({self.curriculum.stages[finished_stage].name}) ended at step "
                  f"{self.step} ({reason})")
        self._samples(finished_stage)
        self._last_tasks = (self.step, self._tasks(finished_stage))
        if not self.controller.finished:
            self._restart_batches()
        self.meter.exclude(time.perf_counter() - t0)

    def _samples(self, stage: int) -> None:
        """Greedy continuations of the fixed prompts into samples.jsonl (rank 0)."""
        if not self.dist.is_main or not self.s.sample_tokens:
            return
        self.model.eval()
        prompts = [self.tokenizer.encode(p) for p in SAMPLE_PROMPTS]
        outs = generate(self.model, prompts, self.s.sample_tokens, temperature=0.0, eos_id=self.tokenizer.eos_id,
                        stop_strings=chat_format.STOP_STRINGS, decode=self.tokenizer.decode)
        self.model.train()
        for prompt, ids in zip(SAMPLE_PROMPTS, outs):
            self.rundir.add_sample({"step": self.step, "stage": self.curriculum.stages[stage].name,
                                    "prompt": prompt, "completion": self.tokenizer.decode(ids)})

    def _tasks(self, stage: int) -> dict[str, dict[float, float]]:
        """Exact-match accuracy per synthetic task on held-out samples (rank 0; {} without synthetic data)."""
        if not self.dist.is_main or not self.curriculum.uses_synthetic() or not self.s.task_samples:
            return {}
        self.model.eval()
        results: dict[str, dict[float, float]] = {}
        name = self.curriculum.stages[stage].name
        for difficulty in _task_difficulties(self.curriculum):
            scores = task_accuracy(self.model, self.tokenizer, difficulty, self.s.task_samples, TASK_EVAL_SEED)
            for task, accuracy in scores.items():
                results.setdefault(task, {})[difficulty] = accuracy
                self.rundir.task_accuracy.write({"step": self.step, "stage": name, "task": task,
                                                 "difficulty": difficulty, "accuracy": accuracy})
        self.model.train()
        return results

    def _finish(self, reason: str) -> None:
        """The end of a run: a last checkpoint (unless a stage end just wrote one), samples, task accuracy."""
        self._drain()
        if self.pending["loss"]:
            self._write_metrics(None)
        if self._last_tasks is not None and self._last_tasks[0] == self.step:
            self.final_tasks = self._last_tasks[1]  # a stage just ended here and did all of this
        else:
            stage = self.controller.stage_index
            self._save([ckpt.step_name(self.step)])
            self._samples(stage)
            self.final_tasks = self._tasks(stage)
        if self.final_tasks:
            self._say("exact-match accuracy on held-out synthetic tasks:\n" + format_table(self.final_tasks))
        self._say(f"done: {self.step} steps, {self.tokens:,} tokens in {self.elapsed:.0f}s; run directory "
                  f"{self.rundir.path}")

    # ----- checkpoints -----

    def _save(self, names: list[str], trainer_state: bool = True) -> None:
        """Write a checkpoint on rank 0 (the others wait); keep `latest` and prune periodic ones."""
        if self.dist.is_main:
            meta = {"model": self.config.to_dict(), "curriculum": self.curriculum.name,
                    "step": self.step, "stage": self.controller.stage_index, "tokens": self.tokens}
            state = self._trainer_state() if trainer_state else None
            ckpt.save_checkpoint(self.rundir.path, names, self.model, meta, state, make_latest=trainer_state)
            ckpt.prune_periodic(self.rundir.path, self.s.keep_checkpoints)
            self.rundir.log(f"checkpoint {', '.join(names)} at step {self.step}")
        dist.barrier(self.dist)

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "bad_total": self.bad_total,
            "pending": self.pending,
            "best_val": self.best_val,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "controller": self.controller.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(self.device),
        }

    def _stage_name(self) -> str:
        """Name of the stage the last step belonged to."""
        index = min(self.controller.stage_index, len(self.curriculum.stages) - 1)
        return self.curriculum.stages[index].name

    def _say(self, message: str) -> None:
        self.rundir.log(message)
        if self.dist.is_main:
            tqdm.write(message)

    def close(self) -> None:
        """Stop the prefetch thread."""
        if self._batches is not None:
            self._batches.close()


class _NullBar:
    """Stands in for the progress bar outside `run()`."""

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass


def _task_difficulties(curriculum: Curriculum) -> list[float]:
    """The whole difficulties the curriculum trains synthetic tasks at."""
    levels: set[int] = set()
    for stage in curriculum.stages:
        if any(w > 0 and is_synthetic_source(name) for name, w in stage.weights.items()):
            lo, hi = sorted(stage.difficulty)
            levels.update(range(math.ceil(lo), math.floor(hi) + 1))
    return sorted(float(d) for d in levels)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
