"""Token mixers: the part of a block that moves information between positions.

The contract is code: `Mixer` and `DecodingState` below. `MIXERS` names the mixers; a mixer's settings check
is a torch-free class in `hamner.model.mixers.settings` it inherits, and what several mixers use lives in
`hamner.model.mixers.shared` (no mixer imports another).

A layer with one mixer holds it at `layers.{i}.attn`; a layer with several holds them in a
`ParallelMixers` at `layers.{i}.attn.{name}` (e.g. `layers.0.attn.swa.qkv.weight`).
`hamner.model.transformer.build_mixer` builds a layer's mixers. This package imports torch only when a mixer is
looked up, so `import hamner` (and `hamner.model.config`, which checks names and settings here) stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from hamner.model.checks import ConfigCheck, NoSettings
from hamner.model.mixers.settings import (
    DifferentialAttentionSettings,
    HebbianSettings,
    SlidingWindowSettings,
    TTTLinearSettings,
)
from hamner.model.registry import LazyRegistry

if TYPE_CHECKING:
    import torch

    from hamner.model.config import HamnerConfig


@runtime_checkable
class DecodingState(Protocol):
    """What cached decoding keeps of one mixer for a batch (keys and values, a recurrent memory, ...).

    It knows how many tokens it has absorbed; the mixer's `forward` updates it in place.
    """

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (indices): finished sequences are dropped from a batch."""
        ...


@runtime_checkable
class Mixer(ConfigCheck, Protocol):
    """A token mixer: an `nn.Module` built as `cls(config, layer_index)` (settings: `check_config`).

    `keeps_documents_apart` says whether it accepts `segment_ids`; one that does not names the reason in
    `mixes_documents_because`, and the block refuses segment ids for it.

    Optional: `init_weights()`, called by `HamnerModel.init_weights` after its generic init (every
    nn.Linear N(0, init_std), a projection named `out` or `down` scaled for the residual when
    `scale_residual_init` and zero when `zero_init_outputs`, norms ones) for parameters the generic
    init does not cover; `aux_loss`,
    a scalar tensor (or None) set by training forwards that the model adds to the training loss;
    `KNOBS` (names) with `check_knob(name, value)` and `set_knob(name, value)`, settings a curriculum
    stage may change mid-run (`HamnerModel.set_knob`; the Hebbian memory's "plasticity").
    """

    keeps_documents_apart: ClassVar[bool]

    def __init__(self, config: HamnerConfig, layer_index: int) -> None: ...

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state: DecodingState | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, C] -> [B, T, C].

        `cos`, `sin` are the RoPE tables already sliced to the positions of x (mixers without RoPE
        ignore them). `state` is None in training and full recomputation; in cached decoding it is
        this mixer's own decoding state and x holds the tokens that follow those it has absorbed.
        `segment_ids` [B, T] marks the documents of a packed training row (cos, sin are then
        [B, T, D/2], positions restarting per document).
        """
        ...

    def new_state(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> DecodingState:
        """An empty decoding state for up to `max_len` positions."""
        ...


MIXERS = LazyRegistry({
    "attention": ("hamner.model.mixers.attention:Attention", NoSettings),
    "swa": ("hamner.model.mixers.attention:SlidingWindowAttention", SlidingWindowSettings),
    "diff_attention": ("hamner.model.mixers.diff_attention:DifferentialAttention", DifferentialAttentionSettings),
    "hebbian": ("hamner.model.mixers.hebbian:HebbianMemory", HebbianSettings),
    "ttt_linear": ("hamner.model.mixers.ttt:TTTLinear", TTTLinearSettings),
})
