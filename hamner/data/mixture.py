"""The mixture sampler: every row of a batch comes from a source drawn with the step's weights.

Sources are shard directories (read through a cursor, see data.windows) and generators (pure
functions of a seed). For step t the sources of all world_size x batch_size rows are drawn from
a generator seeded by (seed, t); rank r keeps rows r*B .. r*B+B-1. Every rank therefore knows how
many rows each shard source gave the whole world, so the cursors are the same on every rank
(rank 0's state is enough to resume all ranks), and the windows of one step are consecutive
stream positions split between ranks, so ranks never read the same window.

Each call is given the `Mixture` of its step (source weights and the generators' difficulty), so
a batch is a function of (seed, step, mixture) and the sampler holds no mixture of its own.
`rows(step, ...)` starts from the cursors recorded for that step, so asking again for a step that
a prefetcher already produced gives the same rows, and a run resumed from `state_dict()` continues
exactly.

Sources named in `assistant_only` count only the tokens their loss masks mark (a chat's replies);
`labeled_rows` returns those masks beside the rows. `batch` makes the training `Batch` of a step
(data.batch), with document ids when the sampler is given the end-of-text id that ends documents.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hamner.data.row_source import CursorSource, MaskedCursorSource, MaskedRowSource, RowSource
from hamner.data.windows import ShardSource
from hamner.errors import DataError

if TYPE_CHECKING:  # batches load torch, which reading rows does not need
    from hamner.data.batch import Batch

HISTORY = 64  # steps whose starting cursors are kept (covers any prefetch depth)
# Sources made on the fly (generators, module and class loaded when used); every other source is a
# shard directory under the data root.
BUILTIN = {
    "synthetic": ("hamner.data.synthetic", "SyntheticSource"),
    "stories": ("hamner.data.stories", "StorySource"),
    "chat": ("hamner.data.chat_gen", "ChatSource"),
}
CONCEPTS = "concepts"  # "concepts" or "concepts/<kind>": trained items of the built-in concept set
BUILTIN_SOURCES: tuple[str, ...] = (*BUILTIN, CONCEPTS)
SYNTHETIC_TASK_PREFIX = "synthetic/"  # "synthetic/<task>": the generator restricted to one task
CONCEPTS_PREFIX = CONCEPTS + "/"  # "concepts/<kind>": the concept set restricted to one kind


def is_synthetic_source(name: str) -> bool:
    """"synthetic" (all tasks mixed) or "synthetic/<task>" (one task)."""
    return name == "synthetic" or name.startswith(SYNTHETIC_TASK_PREFIX)


def is_builtin_source(name: str) -> bool:
    """Sources the data layer generates; every other name is a prepared shard directory."""
    return name in BUILTIN_SOURCES or is_synthetic_source(name) or name.startswith(CONCEPTS_PREFIX)


@dataclass(frozen=True)
class Mixture:
    """What one step draws: a weight per source name (normalised; unnamed sources get 0) and the
    generators' difficulty."""

    weights: Mapping[str, float]
    difficulty: float = 1.0


class MixtureSampler:
    """Deterministic batches mixed from named row sources; resumable through state_dict().

    `document_end`: the end-of-text id when rows pack documents that must stay apart (batches then
    carry document ids); None when each row is one stream."""

    def __init__(self, sources: dict[str, RowSource], seed: int, rank: int = 0, world_size: int = 1,
                 assistant_only: Iterable[str] = (), document_end: int | None = None) -> None:
        if not sources:
            raise DataError("the mixture needs at least one source")
        self.assistant_only = frozenset(assistant_only)
        for name in sorted(self.assistant_only):
            if name not in sources:
                raise DataError(f"loss mask for unknown source {name!r}; open sources: {', '.join(sorted(sources))}")
            wanted = MaskedCursorSource if isinstance(sources[name], CursorSource) else MaskedRowSource
            if not isinstance(sources[name], wanted):
                raise DataError(f"source {name!r} has no loss masks; loss = \"assistant\" needs chat shards "
                                "(prepared from chat records) or the built-in chat source")
        if seed < 0:
            raise DataError(f"the data seed must be non-negative, got {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.sources = sources
        self.names = sorted(sources)
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.cursor_names = [n for n in self.names if isinstance(sources[n], CursorSource)]
        self.document_end = document_end
        self._history: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()  # a prefetch thread calls batch() while the trainer saves state

    def probabilities(self, mixture: Mixture) -> np.ndarray:
        """The mixture's weights over `names`, normalised; a DataError for unknown sources or bad weights."""
        unknown = sorted(set(mixture.weights) - set(self.names))
        if unknown:
            raise DataError(
                f"unknown source(s) {', '.join(unknown)} in the mixture; open sources: {', '.join(self.names)}"
            )
        w = np.array([float(mixture.weights.get(n, 0.0)) for n in self.names])
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise DataError(f"mixture weights must be non-negative with a positive sum, got {dict(mixture.weights)}")
        return w / w.sum()

    def batch(self, step: int, mixture: Mixture, batch_size: int, seq_len: int) -> Batch:
        """The training batch of this rank at `step`: rows of seq_len + 1 tokens cut into inputs and
        targets (masked where a loss mask says so), with document ids when `document_end` is set."""
        from hamner.data.batch import Batch

        rows, masks = self.labeled_rows(step, mixture, batch_size, seq_len + 1)
        return Batch.from_rows(rows, masks, self.document_end)

    def rows(self, step: int, mixture: Mixture, batch_size: int, row_len: int) -> np.ndarray:
        """[batch_size, row_len] int64 rows for this rank at `step`."""
        return self.labeled_rows(step, mixture, batch_size, row_len)[0]

    def labeled_rows(self, step: int, mixture: Mixture, batch_size: int,
                     row_len: int) -> tuple[np.ndarray, np.ndarray | None]:
        """`rows(...)` and their uint8 loss masks (1 = the token counts as a target); None when no
        source is assistant-only, so every token counts."""
        p = self.probabilities(mixture)
        difficulty = float(mixture.difficulty)
        cursors = self._cursors_at(step)
        start = self.rank * batch_size
        rng = np.random.default_rng([self.seed, step])
        drawn = rng.choice(len(self.names), size=self.world_size * batch_size, p=p)
        mine = drawn[start : start + batch_size]
        out = np.empty((batch_size, row_len), dtype=np.int64)
        masks = np.ones((batch_size, row_len), dtype=np.uint8) if self.assistant_only else None
        after = dict(cursors)
        for s, name in enumerate(self.names):
            rows = mine == s
            source = self.sources[name]
            masked = name in self.assistant_only
            if name in after:
                before = after[name] + int(np.count_nonzero(drawn[:start] == s))
                if rows.any():
                    positions = before + np.arange(np.count_nonzero(rows))
                    if masked:
                        out[rows], masks[rows] = source.masked_windows(positions, row_len, self.seed)
                    else:
                        out[rows] = source.windows(positions, row_len, self.seed)
                after[name] += int(np.count_nonzero(drawn == s))
            elif rows.any():
                seed = int(np.random.SeedSequence([self.seed, step, self.rank, s]).generate_state(1)[0])
                n = int(np.count_nonzero(rows))
                if masked:
                    out[rows], masks[rows] = source.masked_rows(n, row_len, seed, difficulty)
                else:
                    out[rows] = source.rows(n, row_len, seed, difficulty)
        with self._lock:
            self._history = {t: c for t, c in self._history.items() if step - HISTORY < t <= step}
            self._history[step], self._history[step + 1] = cursors, after
        return out, masks

    def _cursors_at(self, step: int) -> dict[str, int]:
        with self._lock:
            if step in self._history:
                return self._history[step]
            if not self._history:
                return {n: 0 for n in self.cursor_names}
            known = sorted(self._history)
        raise ValueError(
            f"no sampler state for step {step} (known steps {known[0]}..{known[-1]}); ask for steps in order"
        )

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the seed and the shard cursors of recent steps."""
        with self._lock:
            cursors = [[t, dict(c)] for t, c in sorted(self._history.items())]
        return {"seed": self.seed, "cursors": cursors}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(); sources new since then start at cursor 0, vanished ones are dropped.
        (States saved when the sampler held a mixture also carry "weights" and "difficulty": each
        step's mixture is given with it now, so they are not read.)"""
        self.seed = int(state["seed"])
        self._history = {int(t): {n: int(c.get(n, 0)) for n in self.cursor_names} for t, c in state["cursors"]}


def open_sources(names: Iterable[str], data_root: str | None, tokenizer) -> dict[str, RowSource]:
    """Row sources by name: built-in generators ("synthetic", "synthetic/<task>", "stories", "chat",
    "concepts", "concepts/<kind>") or DATA_ROOT/<name> train shards."""
    return {name: _open(name, data_root, tokenizer, "train") for name in dict.fromkeys(names)}


def open_validation(names: Iterable[str], data_root: str | None, tokenizer) -> dict[str, RowSource]:
    """Validation sources: the val split of shard sources; generators as they are (evaluate them on held-out seeds)."""
    return {name: _open(name, data_root, tokenizer, "val") for name in dict.fromkeys(names)}


def _open(name: str, data_root: str | None, tokenizer, split: str) -> RowSource:
    if name.startswith(SYNTHETIC_TASK_PREFIX):
        from hamner.data.synthetic import TASKS, SyntheticSource

        task = name[len(SYNTHETIC_TASK_PREFIX):]
        if task not in TASKS:
            raise DataError(f"source {name!r}: unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
        return SyntheticSource(tokenizer, task=task)
    if name == CONCEPTS or name.startswith(CONCEPTS_PREFIX):
        from hamner.data.concepts import ConceptSource, parse_source_name

        return ConceptSource(tokenizer, parse_source_name(name))
    if name in BUILTIN:
        module, cls = BUILTIN[name]
        return getattr(importlib.import_module(module), cls)(tokenizer)
    directory = Path(data_root or "DATA") / name
    if data_root is None or not directory.is_dir():
        where = f"{directory} does not exist" if data_root is not None else "no data root was given"
        raise DataError(
            f"source {name!r} needs prepared shards but {where}; make them with "
            f"`hamner prepare <files or HF dataset> --out {directory} --tokenizer {tokenizer.name}`"
        )
    return ShardSource(directory, split=split, tokenizer=tokenizer)
