"""Model size counted from the model itself, and resizing an entrant to match the base.

Every measure is read from a `HamnerModel` built on the meta device (no memory, no init cost),
so a new mixer or MLP is counted as it is built, not by a formula that could drift from it:
  non_embedding     parameters other than the token embedding (tied, or with its untied output head);
  active            non-embedding parameters one token uses: a mixture-of-experts layer counts
                    only the experts a token is routed to (see `active_parameters`);
  flops_per_token   training FLOPs per token at the tournament's sequence length
                    (`HamnerModel.flops_per_token`).
`match_size` moves one integer knob (`intermediate_size` or `n_layers`) by a bracketing search until the
entrant's measure is within `tolerance` (relative) of the base's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from hamner.errors import TournamentError
from hamner.model.config import HamnerConfig
from hamner.model.transformer import HamnerModel


@dataclass(frozen=True)
class Size:
    """The sizes of one model configuration."""

    parameters: int  # all, the tied embedding counted once
    non_embedding: int  # all but the token embedding and an untied output head
    active: int  # non-embedding parameters one token uses
    flops_per_token: float

    def measure(self, name: str) -> float:
        return float(getattr(self, name))


_INIT_FUNCTIONS = ("normal_", "trunc_normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "ones_",
                   "zeros_", "constant_")


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """`torch.nn.init` does nothing: meta tensors hold no values, and initialising them costs
    about as much as building the model."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def meta_model(config: HamnerConfig) -> HamnerModel:
    """The model for `config` on the meta device: shapes only, nothing allocated or initialised."""
    with torch.device("meta"), _no_init():
        return HamnerModel(config)


def active_parameters(model: HamnerModel) -> int:
    """Parameters one token uses (a mixture-of-experts layer counts its router and top-k experts);
    every parameter for a model whose `num_parameters` has no `active` switch."""
    if "active" in inspect.signature(model.num_parameters).parameters:
        return model.num_parameters(active=True)
    return model.num_parameters()


def model_size(config: HamnerConfig, seq_len: int) -> Size:
    """Parameters (total, non-embedding, active) and training FLOPs per token of `config`."""
    model = meta_model(config)
    embedding = model.embed.weight.numel() + (0 if model.lm_head is None else model.lm_head.weight.numel())
    total = model.num_parameters()
    return Size(parameters=total, non_embedding=total - embedding,
                active=active_parameters(model) - embedding,
                flops_per_token=float(model.flops_per_token(seq_len)))


@dataclass(frozen=True)
class Resized:
    """An entrant's configuration after resizing, and how close it came to the target."""

    config: HamnerConfig
    size: Size
    knob: str
    value: int
    target: float
    error: float  # relative: measure / target - 1


def match_size(config: HamnerConfig, target: float, measure: str, knob: str, seq_len: int,
               tolerance: float) -> Resized:
    """`config` with `knob` set to the whole number whose `measure` is closest to `target`.

    The measure must grow with the knob (it does for the MLP width and the layer count); raises
    ValueError when even the closest value misses `target` by more than `tolerance` (relative).
    """
    measured: dict[int, float] = {}

    def value_of(n: int) -> float:
        if n not in measured:
            measured[n] = model_size(dataclasses.replace(config, **{knob: n}), seq_len).measure(measure)
        return measured[n]

    lo, hi = 1, max(2, getattr(config, knob))
    while value_of(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            raise TournamentError(f"{knob} would have to exceed {1 << 24} to reach {measure} {target:,.0f}")
    # Regula falsi on whole numbers, keeping value_of(lo) < target <= value_of(hi) (unless lo == 1):
    # the measures are close to linear in the knob, so this takes a handful of model builds.
    while hi - lo > 1 and value_of(lo) < target:
        guess = lo + round((target - value_of(lo)) * (hi - lo) / (value_of(hi) - value_of(lo)))
        guess = min(max(guess, lo + 1), hi - 1)
        if value_of(guess) >= target:
            hi = guess
        else:
            lo = guess
    best = min((lo, hi), key=lambda n: abs(value_of(n) - target))
    resized = dataclasses.replace(config, **{knob: best})
    size = model_size(resized, seq_len)
    error = size.measure(measure) / target - 1
    if abs(error) > tolerance:
        raise TournamentError(f"{measure} {size.measure(measure):,.0f} at {knob} = {best} is {100 * error:+.1f}% "
                         f"from the base's {target:,.0f}, outside the tolerance of {100 * tolerance:g}%; "
                         "pick a finer knob (intermediate_size) or a larger tolerance")
    return Resized(config=resized, size=size, knob=knob, value=best, target=target, error=error)
