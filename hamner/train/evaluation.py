"""Evaluation during training: validation loss at eval intervals; samples, task accuracy and the
curriculum's probe at stage ends.

Validation rows of a synthetic source are drawn at one fixed difficulty per source for the whole
run (the highest its curriculum trains it at, recorded in config.json), from held-out seeds, so
validation losses stay comparable across stages even when a stage ramps the difficulty up; other
generated sources ignore difficulty, and shard sources read their val split. The mean over sources
is averaged over ranks, so every rank takes the same best-checkpoint and early-stop decisions.
Validation counts what training counts: an assistant-only source's loss covers the replies only, and
document packing keeps attention inside each document. Samples, task accuracy and the probe run on
rank 0 only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hamner.data import chat_format
from hamner.data.batch import Batch
from hamner.data.mixture import is_synthetic_source
from hamner.data.row_source import RowSource
from hamner.data.tokenizer import Tokenizer
from hamner.eval.loss import utf8_bytes
from hamner.eval.probe import ProbeItem, score_probe
from hamner.eval.tasks import held_out_seed, task_accuracy
from hamner.run.directory import RunDir
from hamner.train import distributed as dist
from hamner.train.curriculum.spec import Curriculum
from hamner.train.loggers import Loggers
from hamner.train.settings import RunSettings
from hamner.train.step import autocast
from hamner.use.generate import generate

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


def validation_difficulties(curriculum: Curriculum, names: list[str]) -> dict[str, float]:
    """Per synthetic source, the highest difficulty of any stage that trains on it (what validation
    uses); other sources ignore difficulty."""
    return {name: max((max(stage.difficulty) for stage in curriculum.stages if stage.weights.get(name, 0) > 0),
                      default=1.0) for name in names if is_synthetic_source(name)}


def task_difficulties(curriculum: Curriculum) -> list[float]:
    """The whole difficulties the curriculum trains synthetic tasks at (task accuracy is scored at each)."""
    levels: set[int] = set()
    for stage in curriculum.stages:
        if any(w > 0 and is_synthetic_source(name) for name, w in stage.weights.items()):
            lo, hi = sorted(stage.difficulty)
            levels.update(range(math.ceil(lo), math.floor(hi) + 1))
    return sorted(float(d) for d in levels)


@dataclass(frozen=True)
class Validation:
    """One validation pass: the mean loss over sources (and ranks), each source's, bits per byte."""

    loss: float
    per_source: dict[str, float]
    bits_per_byte: float | None

    def describe(self) -> str:
        detail = ", ".join(f"{n} {v:.4f}" for n, v in self.per_source.items())
        if self.bits_per_byte is not None:
            detail += f"; {self.bits_per_byte:.4f} bits per byte"
        return f"{self.loss:.4f} ({detail})"


class TrainEvaluator:
    """Validation, samples, task accuracy and probe of the model being trained.

    `document_end` is the end-of-text id when the run keeps packed documents apart (as its training
    batches do), else None."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, curriculum: Curriculum,
                 sources: dict[str, RowSource], settings: RunSettings, dtype: torch.dtype,
                 info: dist.DistInfo, device: torch.device, probe: list[ProbeItem] | None = None,
                 document_end: int | None = None) -> None:
        self.model, self.tokenizer, self.curriculum = model, tokenizer, curriculum
        self.sources, self.s, self.dtype, self.dist, self.device = sources, settings, dtype, info, device
        self.probe_items = probe
        self.document_end = document_end
        self.difficulty = validation_difficulties(curriculum, sorted(sources))
        self.assistant_only = set(curriculum.assistant_only_sources())

    @torch.no_grad()
    def validate(self) -> Validation:
        """Mean loss over every validation source's held-out rows."""
        s = self.s
        self.model.eval()
        per_source: dict[str, float] = {}
        bytes_per_token: list[float] = []
        for name, source in sorted(self.sources.items()):
            shape = (s.batch_size * s.eval_batches, s.seq_len + 1, VALIDATION_SEED, self.difficulty.get(name, 1.0))
            rows, masks = source.masked_rows(*shape) if name in self.assistant_only else (source.rows(*shape), None)
            rows = np.asarray(rows, dtype=np.int64)
            parts = np.split(masks, s.eval_batches) if masks is not None else [None] * s.eval_batches
            total = 0.0
            for part, part_masks in zip(np.split(rows, s.eval_batches), parts):
                batch = Batch.from_rows(part, part_masks, self.document_end).to(self.device)
                with autocast(self.device, self.dtype):
                    total += float(self.model(batch.idx, batch.targets, segment_ids=batch.segment_ids))
            per_source[name] = total / s.eval_batches
            if self.curriculum.bits_per_byte:
                bytes_per_token.append(utf8_bytes(self.tokenizer, rows[:, 1:]) / rows[:, 1:].size)
        self.model.train()
        mean = torch.tensor(sum(per_source.values()) / len(per_source), device=self.device)
        loss = float(dist.mean_over_ranks(mean, self.dist))
        bpb = loss / math.log(2) / (sum(bytes_per_token) / len(bytes_per_token)) if bytes_per_token else None
        return Validation(loss, per_source, bpb)

    def samples(self) -> list[tuple[str, str]]:
        """(prompt, greedy completion) for each fixed prompt (rank 0; [] when sample_tokens is 0)."""
        if not self.dist.is_main or not self.s.sample_tokens:
            return []
        self.model.eval()
        prompts = [self.tokenizer.encode(p) for p in SAMPLE_PROMPTS]
        outs = generate(self.model, prompts, self.s.sample_tokens, temperature=0.0, eos_id=self.tokenizer.eos_id,
                        stop_strings=chat_format.STOP_STRINGS, decode=self.tokenizer.decode)
        self.model.train()
        return [(prompt, self.tokenizer.decode(ids)) for prompt, ids in zip(SAMPLE_PROMPTS, outs)]

    def tasks(self) -> dict[str, dict[float, float]]:
        """Task -> difficulty -> exact-match accuracy on held-out samples (rank 0; {} without synthetic data)."""
        if not self.dist.is_main or not self.curriculum.uses_synthetic() or not self.s.task_samples:
            return {}
        self.model.eval()
        results: dict[str, dict[float, float]] = {}
        for difficulty in task_difficulties(self.curriculum):
            scores = task_accuracy(self.model, self.tokenizer, difficulty, self.s.task_samples, TASK_EVAL_SEED)
            for task, accuracy in scores.items():
                results.setdefault(task, {})[difficulty] = accuracy
        self.model.train()
        return results

    def probe(self) -> list[dict]:
        """The curriculum's probe: per kind and split, correct / total / accuracy (rank 0; [] without a probe)."""
        if not self.dist.is_main or self.probe_items is None:
            return []
        self.model.eval()
        rows = score_probe(self.model, self.tokenizer, self.probe_items,
                           document_start=self.curriculum.packing == "document")
        self.model.train()
        return rows

    def write_stage_outputs(self, step: int, stage: str, rundir: RunDir,
                            loggers: Loggers) -> tuple[dict[str, dict[float, float]], list[dict]]:
        """A stage end's outputs: samples into samples.jsonl, task accuracy to the loggers, the probe into
        probe.csv. Returns (task accuracies, probe rows)."""
        for prompt, completion in self.samples():
            rundir.add_sample({"step": step, "stage": stage, "prompt": prompt, "completion": completion})
        results = self.tasks()
        if results:
            loggers.task_accuracy(step, stage, results)
        probe = self.probe()
        for row in probe:
            rundir.probe.write({"step": step, "stage": stage, **row})
        return results, probe
