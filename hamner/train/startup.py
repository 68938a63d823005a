"""What a run is built from, checked before anything is written: the model config, the tokenizer,
the validation sources and --init-from weights; then the opening (and locking) of the run directory,
the first write. Each problem is a TrainError with a one-line message."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from hamner.data.batch import Batch
from hamner.data.loader import Prefetcher
from hamner.data.mixture import Mixture, MixtureSampler, open_validation
from hamner.data.row_source import RowSource
from hamner.data.tokenizer import Tokenizer, load_tokenizer
from hamner.errors import DataError, RunDirError, TrainError
from hamner.model.config import HamnerConfig, load_model_file, model_config
from hamner.model.transformer import HamnerModel, build_model
from hamner.run import checkpoint as ckpt
from hamner.run.directory import RunDir
from hamner.train import distributed as dist
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import Curriculum
from hamner.train.host_memory import keep_freed_memory
from hamner.train.settings import DTYPES, Recipe, RunSettings
from hamner.use.load import load_model


def configure_torch(s: RunSettings, device: torch.device) -> torch.dtype:
    """Apply the run's thread count, TF32 matmuls and, on a CPU, the allocator setting that keeps freed
    memory (`hamner.train.host_memory`); returns its autocast dtype (refusing bf16 on a GPU without it)."""
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    if device.type == "cpu":
        keep_freed_memory()
    dtype = DTYPES[s.dtype]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("this GPU has no bf16 support; use --dtype fp16 or fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return dtype


def checked_model_config(s: RunSettings, curriculum: Curriculum) -> HamnerConfig:
    """The preset's model config (with --model and --tokenizer), checked against the curriculum and settings."""
    config = model_config(s.preset)
    if s.model is not None:
        config = load_model_file(s.model, base=config)
    if s.tokenizer is not None:  # a file is recorded by absolute path, so checkpoints find it anywhere
        config.tokenizer = str(Path(s.tokenizer).resolve()) if Path(s.tokenizer).exists() else s.tokenizer
    if curriculum.tokenizer is not None and curriculum.tokenizer != config.tokenizer:
        raise TrainError(f"curriculum {curriculum.name!r} needs the {curriculum.tokenizer!r} tokenizer "
                         f"but preset {s.preset!r} uses {config.tokenizer!r}; pick a preset built for it")
    if s.seq_len > config.max_seq_len:
        model = f"model file {s.model} on preset {s.preset!r}" if s.model is not None else f"preset {s.preset!r}"
        raise TrainError(f"--seq-len {s.seq_len} exceeds the context of {model} (max_seq_len "
                         f"{config.max_seq_len} tokens)")
    try:
        curriculum.check_seq_len(config.max_seq_len)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    curriculum.check_head_lr(config.tie_embeddings)
    if s.init_from and not Path(s.init_from).exists():
        raise TrainError(f"--init-from {s.init_from}: no checkpoint at {s.init_from}")
    if curriculum.requires_init and not (s.init_from or s.resume):
        raise TrainError(f"curriculum {curriculum.name!r} continues a trained model: give --init-from CHECKPOINT")
    if s.stage >= len(curriculum.stages):
        raise TrainError(f"--stage {s.stage} does not exist: curriculum {curriculum.name!r} has "
                         f"stages 0..{len(curriculum.stages) - 1}")
    return config


def checked_model(config: HamnerConfig, curriculum: Curriculum, device: torch.device) -> HamnerModel:
    """A fresh model of `config` on `device`, refused when a curriculum stage sets a model knob it lacks
    (or a value the knob does not accept), or asks for document packing its mixers cannot keep apart."""
    model = build_model(config).to(device)
    curriculum.check_model_knobs(model.check_knob)
    refusal = next((layer.documents_refusal for layer in model.layers if layer.documents_refusal), None)
    if curriculum.packing == "document" and refusal:  # the block's own words: the mixer that refuses, and why
        raise TrainError(f"curriculum {curriculum.name!r} packs documents, but {refusal}; use "
                         "packing = \"stream\" or a mixer that keeps documents apart")
    return model


def checked_tokenizer(config: HamnerConfig, s: RunSettings) -> tuple[HamnerConfig, Tokenizer]:
    """The model config sized to its tokenizer, and the tokenizer.

    A tokenizer picked with --tokenizer sets the model's vocabulary to its own size (unless a model file
    gave another vocab_size than the preset's), so --tokenizer bytes on v3-50m is a byte-level model of
    v3-50m's shape that cannot emit ids the tokenizer lacks. A vocabulary smaller than the tokenizer's is
    refused."""
    tokenizer = load_tokenizer(config.tokenizer)
    if s.tokenizer is not None and config.vocab_size == model_config(s.preset).vocab_size:
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    if tokenizer.vocab_size > config.vocab_size:
        raise TrainError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model "
                         f"only {config.vocab_size}")
    return config, tokenizer


def validation_sources(names: list[str], data: str | None,
                       tokenizer: Tokenizer) -> tuple[dict[str, RowSource], list[str]]:
    """Validation sources, and a note for each shard source left out because it has no val split."""
    sources, notes = {}, []
    for name in names:
        try:
            sources.update(open_validation([name], data, tokenizer))
        except DataError as exc:
            notes.append(f"no validation for {name}: {exc}")
    return sources, notes


def check_same_model(saved: dict, config: HamnerConfig, run_dir: Path, preset: str) -> None:
    """Refuse to resume a run whose checkpoint holds another model than `config`. The saved config goes
    through `from_dict`, so one saved before a field existed compares with that field's default."""
    if HamnerConfig.from_dict(saved).to_dict() != config.to_dict():
        raise TrainError(f"cannot resume {run_dir}: its model config differs from preset {preset!r}")


def load_init_weights(model: torch.nn.Module, path: str, config: HamnerConfig, tokenizer: Tokenizer,
                      preset: str) -> None:
    """--init-from: weights of the same shape and vocabulary into `model` (a bare state-dict file is read
    into a model of `config`)."""
    source, saved = load_model(path, config=config)
    if saved.to_dict() | {"tokenizer": None} != config.to_dict() | {"tokenizer": None}:
        raise TrainError(f"--init-from {path}: its model shape differs from preset {preset!r}")
    if saved.tokenizer != config.tokenizer and load_tokenizer(saved.tokenizer).fingerprint != tokenizer.fingerprint:
        raise TrainError(f"--init-from {path}: it uses tokenizer {saved.tokenizer!r}, a different vocabulary "
                         f"from {config.tokenizer!r}")
    model.load_state_dict(source.state_dict())


def open_run_dir(rundir: RunDir, info: dist.DistInfo, resume: bool, notes: list[str]) -> None:
    """Lock the run directory (rank 0; every rank fails alike when it is taken), refuse a fresh start
    over a resumable run and a resume without a complete checkpoint, clear the temporaries of killed
    processes and log `notes`."""
    path, error = rundir.path, None
    if info.is_main:
        try:
            rundir.open()
        except RunDirError as exc:
            error = str(exc)
    if dist.any_rank(error is not None, info):
        raise TrainError(error or f"rank 0 could not open the run directory {path}")
    if not resume and ckpt.has_complete_checkpoint(path):
        raise TrainError(f"{path} already holds checkpoints; resume it with --resume {path} or pick another --out")
    if resume and not ckpt.has_complete_checkpoint(path):
        raise TrainError(f"cannot resume {path}: it holds no complete checkpoint (a kill during its first save); "
                         f"start it afresh with the same flags and --out {path}")
    if info.is_main and (cleared := ckpt.remove_temporaries(path)):
        rundir.log(f"cleared what interrupted processes left: {', '.join(cleared)}")
    for note in notes:
        rundir.log(note)


def curriculum_batches(controller: CurriculumController, sampler: MixtureSampler, recipe: Recipe, stride: int,
                       step: int, device: torch.device) -> Prefetcher:
    """A prefetcher of the current stage's micro-batches (shaped as `recipe` says, rows as long as the
    stage's seq_len ramp says where it has one) from optimizer step `step` on, mixed as `controller` says.

    The mixture of step t is read off a frozen copy of the controller (plain fields, no losses
    needed), so it depends on t only and resumed runs draw the same rows. Micro-batch j of step t is
    drawn as number t * stride + j, `stride` being the largest grad_accum of any stage, so stages with
    different accumulation never draw the same rows (with one grad_accum throughout, the numbers run on)."""
    plan = copy.copy(controller)
    accum = recipe.grad_accum

    def make_batch(index: int) -> Batch:
        step_of, micro = divmod(index, accum)
        ahead = step_of - plan.global_step
        mixture = Mixture(plan.weights(), plan.difficulty(steps_ahead=ahead))
        seq_len = plan.seq_len(steps_ahead=ahead) or recipe.seq_len
        return sampler.batch(step_of * stride + micro, mixture, recipe.batch_size, seq_len)

    return Prefetcher(make_batch, start_step=step * accum, device=device)
