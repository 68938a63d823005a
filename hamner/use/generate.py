"""Text generation from a HamnerModel: a decoding cache, sampling, batching and streaming.

Decoding is prefill-then-one-token-at-a-time. With the cache, each step runs only the new token
through the model; without it, each step re-runs the whole context (the ground truth the
cache is tested against). Contexts longer than the model's `max_seq_len` are cropped to their
last `max_seq_len` tokens; once the cache is full, every further step re-prefills that cropped
window, so cached and uncached decoding always see the same context.

Prompts of different lengths are decoded in groups of equal length: the attention op has no
padding mask, so left-padding would let real tokens attend to padding. Finished rows are dropped
from their group's batch (and cache) as they end.
"""
from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from hamner.errors import InferenceError
from hamner.model.decoding_cache import DecodingCache
from hamner.model.transformer import HamnerModel


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from the logits."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InferenceError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InferenceError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InferenceError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InferenceError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make already-seen tokens (bool mask `seen`, like `logits`) less likely.

    Positive logits are divided by `penalty`, negative ones multiplied by it, so a penalty > 1
    always lowers a seen token's logit.
    """
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most likely tokens whose probabilities first sum to >= p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, mass_before >= p)
    return logits.masked_fill(remove, float("-inf"))


def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row of `logits` [B, V]: repetition penalty, then greedy or temperature/top-k/top-p sampling."""
    if sampling.repetition_penalty != 1.0:
        logits = penalize_repetition(logits, seen, sampling.repetition_penalty)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        logits = filter_top_k(logits, sampling.top_k)
    if sampling.top_p is not None:
        logits = filter_top_p(logits, sampling.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _last_logits(model: HamnerModel, context: torch.Tensor, cache: DecodingCache | None) -> torch.Tensor:
    """Logits after the last token of `context` [B, T]; with a cache only the newest token is run when it fits."""
    window = model.config.max_seq_len
    if cache is not None and 0 < cache.pos < cache.max_len:
        hidden = model.hidden_states(context[:, -1:], cache=cache)
    else:
        if cache is not None:
            cache.reset()
        hidden = model.hidden_states(context[:, -window:], cache=cache)
    return model.logits(hidden[:, -1])


def _strip_stop(ids: list[int], decode: Callable[[list[int]], str], stop_strings: Sequence[str]) -> bool:
    """If the text of `ids` contains a stop string, drop the tokens from the one where it starts on; True if so."""
    text = decode(ids)
    starts = [text.find(s) for s in stop_strings if s in text]
    if not starts:
        return False
    while ids and len(decode(ids)) > min(starts):
        ids.pop()
    return True


@torch.inference_mode()
def _decode_group(
    model: HamnerModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    stop_strings: Sequence[str],
    decode: Callable[[list[int]], str] | None,
    generator: torch.Generator | None,
    use_cache: bool,
) -> Iterator[list[list[int]]]:
    """Decode prompts of equal length as one batch; after every step yield the generated ids per prompt so far.

    A row ends on `eos_id` (not included) or a stop string (stripped, see `_strip_stop`).
    """
    if max_new_tokens == 0:
        return
    device = model.embed.weight.device
    context = torch.tensor(prompts, dtype=torch.long, device=device)
    seen = torch.zeros(len(prompts), model.config.vocab_size, dtype=torch.bool, device=device)
    seen.scatter_(1, context, True)
    cache = DecodingCache(model, len(prompts)) if use_cache else None
    outs: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # prompt index of each batch row
    logits = _last_logits(model, context, cache)
    for step in range(max_new_tokens):
        tokens = next_tokens(logits, seen, sampling, generator)
        keep = []
        for row, token in enumerate(tokens.tolist()):
            ids = outs[live[row]]
            if token == eos_id:
                continue
            ids.append(token)
            if stop_strings and _strip_stop(ids, decode, stop_strings):
                continue
            keep.append(row)
        yield outs
        if not keep or step == max_new_tokens - 1:
            return
        context = torch.cat((context, tokens[:, None]), dim=1)
        seen.scatter_(1, tokens[:, None], True)
        if len(keep) < len(live):
            rows = torch.tensor(keep, device=device)
            context, seen = context[rows], seen[rows]
            if cache is not None:
                cache.select(rows)
            live = [live[row] for row in keep]
        logits = _last_logits(model, context, cache)


def _check_prompts(model: HamnerModel, prompts: list[list[int]]) -> None:
    vocab = model.config.vocab_size
    if not prompts:
        raise InferenceError("no prompt given")
    for prompt in prompts:
        if not prompt:
            raise InferenceError("prompt is empty: give at least one token id")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise InferenceError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")


def _start(
    model: HamnerModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_strings: Sequence[str],
    decode: Callable[[list[int]], str] | None,
    seed: int | None,
) -> tuple[tuple[str, ...], torch.Generator | None]:
    """Validate the common arguments; return the stop strings as a tuple and the seeded generator, if any."""
    _check_prompts(model, prompts)
    if max_new_tokens < 0:
        raise InferenceError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if "" in stops:
        raise InferenceError("stop_strings must not contain an empty string")
    if stops and decode is None:
        raise InferenceError("stop_strings need a decode function (ids -> text)")
    generator = None if seed is None else torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    return stops, generator


def generate(
    model: HamnerModel,
    prompt_ids: list[list[int]] | list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; returns the new ids of each prompt, in order.

    `prompt_ids` is one prompt (list of ids) or a batch of them (any lengths); the result is always a
    list with one id list per prompt. temperature 0 is greedy. The repetition penalty covers prompt
    and generated tokens. A sequence ends early on `eos_id` (left out of the result) or once its
    decoded generated text contains one of `stop_strings` (checked per token; the stop string and
    the tokens from the one where it starts are left out; needs `decode`). `seed` makes sampling
    reproducible; with sampling, a prompt's result depends on what it is batched with.
    """
    single = bool(prompt_ids) and not isinstance(prompt_ids[0], Sequence)
    prompts = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    stop_strings, generator = _start(model, prompts, max_new_tokens, stop_strings, decode, seed)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        groups[len(prompt)].append(i)
    results: list[list[int]] = [[] for _ in prompts]
    for members in groups.values():
        snapshots = _decode_group(model, [prompts[i] for i in members], max_new_tokens, sampling,
                                  eos_id, stop_strings, decode, generator, use_cache)
        last = deque(snapshots, maxlen=1)  # each snapshot holds every row's tokens so far; keep the final one
        outs = last[0] if last else [[] for _ in members]
        for i, ids in zip(members, outs):
            results[i] = ids
    return results


def _releasable(ids: list[int], decode: Callable[[list[int]], str], stop_strings: Sequence[str]) -> str:
    """The longest text of a token prefix of `ids` that no later token can take back.

    Held back: a tail that could be the start of a stop string, and a tail ending in an
    incomplete UTF-8 character (decoded as U+FFFD).
    """
    text = decode(ids)
    hold = max((k for s in stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    for end in range(len(ids), -1, -1):
        piece = text if end == len(ids) else decode(ids[:end])
        if len(piece) <= len(text) - hold and not piece.endswith("\ufffd") and text.startswith(piece):
            return piece
    return ""


def stream(
    model: HamnerModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    decode: Callable[[list[int]], str],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    stop_strings: Sequence[str] = (),
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[str]:
    """Generate for one prompt, yielding text pieces as soon as they are certain.

    Same arguments and decoding as `generate`; the pieces join to `decode` of what `generate`
    returns. Text that might still turn into a stop string, or an incomplete UTF-8 character,
    is held back until the next tokens settle it.
    """
    prompts = [list(prompt_ids)]
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    stop_strings, generator = _start(model, prompts, max_new_tokens, stop_strings, decode, seed)
    emitted = ""
    outs: list[list[int]] = [[]]
    for outs in _decode_group(model, prompts, max_new_tokens, sampling, eos_id, stop_strings, decode,
                              generator, use_cache):
        text = _releasable(outs[0], decode, stop_strings)
        if len(text) > len(emitted) and text.startswith(emitted):
            yield text[len(emitted):]
            emitted = text
    final = decode(outs[0])
    if len(final) > len(emitted):
        yield final[len(emitted):]
