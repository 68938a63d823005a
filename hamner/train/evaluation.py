"""Evaluation during training: the curriculum's evaluations by name (validation loss, length
generalisation, task accuracy, probe) at their intervals and at step 0, each step's figures written
into the run; samples, task accuracy and the curriculum's probe at stage ends.

Validation rows of a synthetic source are drawn at one fixed difficulty per source for the whole
run (the highest its curriculum trains it at, recorded in config.json), from held-out seeds, so
validation losses stay comparable across stages even when a stage ramps the difficulty up; other
generated sources ignore difficulty, and shard sources read their val split. The mean over sources
is averaged over ranks, so every rank takes the same best-checkpoint and early-stop decisions.
Validation counts what training counts: an assistant-only source's loss covers the replies only, and
document packing keeps attention inside each document. Samples, task accuracy and the probe run on
rank 0 only (their accuracies are shared with every rank, which take the same decisions on them);
length generalisation runs on every rank over the same tokens.

Length generalisation is the TTT study's chunk perplexity (hamner.eval.length_study): sequences of
max(multiples) x W validation tokens read in one pass, perplexity of the chunk of K predictions
ending by m x W, reported as `length_ppl@{m}W`. Its tokens are the val split of the curriculum's first
prepared source, or built-in stories on a held-out seed when it has none.

An evaluation step's figures go to RUN/evals/step-N.json (its summary), RUN/evals/all_summaries.json
(every step so far) and RUN/evals.csv plus the loggers (the scalars); RUN/evals/metadata.json
describes the set-up (evaluations, recipe, model, what the best checkpoint and early stop follow).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hamner.data import chat_format
from hamner.data.batch import Batch
from hamner.data.mixture import is_synthetic_source
from hamner.data.row_source import RowSource
from hamner.data.tokenizer import Tokenizer
from hamner.errors import DataError, TrainError
from hamner.eval.length_study import ChunkGrid, chunk_perplexity, validation_stream
from hamner.eval.loss import utf8_bytes
from hamner.eval.probe import ProbeItem, score_probe
from hamner.eval.tasks import held_out_seed, task_accuracy
from hamner.run.directory import EVALS, RunDir
from hamner.run.durable import write_text
from hamner.train import distributed as dist
from hamner.train.curriculum.spec import Curriculum, Evaluation
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


@dataclass
class EvalSummary:
    """The evaluations of one step: scalar metrics by name, each kind's details, and the validation pass."""

    step: int
    stage: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    validation: Validation | None = None
    task_results: dict[str, dict[float, float]] = field(default_factory=dict)  # task -> difficulty -> accuracy

    def to_json(self) -> dict[str, Any]:
        """What evals/step-N.json holds."""
        return {"step": self.step, "stage": self.stage, "metrics": self.metrics, **self.details}

    def describe(self) -> str:
        """One line of the scalar metrics, for train.log and the console."""
        return ", ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())


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
        self._length_tokens: np.ndarray | None = None

    def evaluate(self, due: list[Evaluation], step: int, stage: str) -> EvalSummary:
        """Run the evaluations `due` at `step` (validation loss only when the run has validation sources)."""
        summary = EvalSummary(step, stage)
        for evaluation in due:
            if evaluation.kind == "val_loss" and self.sources:
                result = summary.validation = self.validate()
                summary.metrics["val_loss"] = result.loss
                if result.bits_per_byte is not None:
                    summary.metrics["val_bpc"] = result.bits_per_byte
                summary.details["val_loss"] = asdict(result)
            elif evaluation.kind == "length_gen":
                rows = self.length_gen(evaluation)
                summary.metrics.update({f"length_ppl@{r['multiple']}W": r["perplexity"] for r in rows})
                summary.details["length_gen"] = {
                    "window": evaluation.window, "chunk": evaluation.chunk, "stride": evaluation.stride,
                    "multiples": list(evaluation.multiples), "rows": rows}
            elif evaluation.kind == "tasks":
                results = summary.task_results = self.tasks()
                scores = [a for by in results.values() for a in by.values()]
                accuracy = self._shared(sum(scores) / len(scores) if scores else None)
                if accuracy is not None:
                    summary.metrics["task_accuracy"] = accuracy
                summary.details["tasks"] = {task: {f"{d:g}": a for d, a in by.items()} for task, by in results.items()}
            elif evaluation.kind == "probe":
                rows = self.probe()
                overall = [r for r in rows if r["kind"] == "all"]
                total = sum(r["total"] for r in overall)
                accuracy = self._shared(sum(r["correct"] for r in overall) / total if total else None)
                if accuracy is not None:
                    summary.metrics["probe_accuracy"] = accuracy
                summary.details["probe"] = rows
        return summary

    def _shared(self, accuracy: float | None) -> float | None:
        """Rank 0's accuracy (in [0, 1], or None) on every rank, so all ranks decide alike."""
        if not self.dist.enabled:
            return accuracy
        value = accuracy if self.dist.is_main and accuracy is not None else -1.0
        shared = float(dist.max_over_ranks(torch.tensor(value, device=self.device), self.dist))
        return None if shared < 0 else shared

    def length_stream(self, tokens: int) -> np.ndarray:
        """`tokens` validation tokens for length generalisation: the val split of the curriculum's first
        prepared source, else built-in stories on a held-out seed (read once, then reused)."""
        if self._length_tokens is None or len(self._length_tokens) < tokens:
            names = self.curriculum.data_sources()
            source = str(Path(self.s.data) / names[0]) if names and self.s.data else None
            try:
                self._length_tokens = validation_stream(self.tokenizer, tokens, source)
            except DataError as exc:
                raise TrainError(f"length_gen evaluation: {exc}") from None
        return self._length_tokens[:tokens]

    @torch.no_grad()
    def length_gen(self, evaluation: Evaluation) -> list[dict[str, float]]:
        """Chunk perplexity at each multiple of the window, one pass per sequence (the TTT study's reading)."""
        grid = ChunkGrid(evaluation.window, evaluation.chunk, evaluation.stride, evaluation.multiples)
        tokens = self.length_stream(evaluation.sequences * grid.length + 1)
        self.model.eval()
        try:
            with autocast(self.device, self.dtype):
                rows = chunk_perplexity(self.model, tokens, grid, mode="single", sequences=evaluation.sequences)
        except ValueError as exc:
            raise TrainError(f"length_gen evaluation: {exc}") from None
        finally:
            self.model.train()
        return rows

    @torch.no_grad()
    def validate(self) -> Validation:
        """Mean loss over every validation source's held-out rows (batches that count no target left out)."""
        s = self.s
        self.model.eval()
        per_source: dict[str, float] = {}
        bytes_per_token: list[float] = []
        for name, source in sorted(self.sources.items()):
            shape = (s.batch_size * s.eval_batches, s.seq_len + 1, VALIDATION_SEED, self.difficulty.get(name, 1.0))
            rows, masks = source.masked_rows(*shape) if name in self.assistant_only else (source.rows(*shape), None)
            rows = np.asarray(rows, dtype=np.int64)
            parts = np.split(masks, s.eval_batches) if masks is not None else [None] * s.eval_batches
            total, counted = 0.0, 0
            for part, part_masks in zip(np.split(rows, s.eval_batches), parts):
                if part_masks is not None and not part_masks[:, 1:].any():
                    continue  # no counted target: its loss of 0 would only pull the mean down
                batch = Batch.from_rows(part, part_masks, self.document_end).to(self.device)
                with autocast(self.device, self.dtype):
                    total += float(self.model(batch.idx, batch.targets, segment_ids=batch.segment_ids))
                counted += 1
            per_source[name] = total / max(counted, 1)
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


class EvalRecord:
    """RUN/evals/: step-N.json per evaluation step, all_summaries.json with every step so far, and
    metadata.json describing the study's set-up. Written on rank 0 only, each file replaced atomically."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.folder = Path(run_dir) / EVALS
        self.enabled = enabled
        self.summaries: list[dict[str, Any]] = []

    def resume_at(self, step: int) -> None:
        """Keep what an earlier process wrote up to `step` and drop the rest (a fresh run passes -1: all)."""
        if not self.enabled:
            return
        path = self.folder / "all_summaries.json"
        known = json.loads(path.read_text()) if path.is_file() else []
        self.summaries = [s for s in known if s["step"] <= step]
        for stale in self.folder.glob("step-*.json"):
            if int(stale.stem.removeprefix("step-")) > step:
                stale.unlink()
        if path.is_file():
            self._write(path, self.summaries)

    def write_metadata(self, metadata: dict[str, Any]) -> None:
        """metadata.json: the set-up of the run's evaluations."""
        if self.enabled:
            self._write(self.folder / "metadata.json", metadata)

    def add(self, summary: EvalSummary) -> None:
        """Write step-N.json and the updated all_summaries.json (a step evaluated again replaces its entry)."""
        if not self.enabled:
            return
        entry = summary.to_json()
        self.summaries = [s for s in self.summaries if s["step"] != summary.step] + [entry]
        self._write(self.folder / f"step-{summary.step}.json", entry)
        self._write(self.folder / "all_summaries.json", self.summaries)

    def _write(self, path: Path, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(value, indent=2) + "\n")
