"""Token mixers: the part of a block that moves information between positions.

A mixer is an `nn.Module` built as `cls(config, layer_index)` with

  forward(x [B, T, C], cos, sin, state=None, segment_ids=None) -> [B, T, C]
      `cos`, `sin` are the RoPE tables already sliced to the positions of x (mixers without RoPE
      ignore them). `state` is None in training and full recomputation; in cached decoding it is
      this mixer's own decoding state, x holds the tokens that follow those it has absorbed, and
      the mixer updates the state in place (the state knows how many tokens it has seen).
      `segment_ids` [B, T] marks the documents of a packed training row (cos, sin are then
      [B, T, D/2], positions restarting per document); a mixer whose class sets
      `keeps_documents_apart = False` refuses it.
  new_state(batch_size, max_len, device, dtype) -> state
      An empty decoding state for up to `max_len` positions. The state has `select(rows)`, which
      keeps only those batch rows (finished sequences are dropped from a batch).

Optional: `init_weights()`, called by `HamnerModel.init_weights` after its generic init (every
nn.Linear N(0, init_std), a projection named `out` or `down` scaled for the residual when
`scale_residual_init`, norms ones) for parameters the generic init does not cover; `aux_loss`,
a scalar tensor (or None) set by training forwards that the model adds to the training loss;
`KNOBS` (names) with `set_knob(name, value)`, settings a curriculum stage may change mid-run
(`HamnerModel.set_knob`; the Hebbian memory's "plasticity").
Settings a mixer needs are `HamnerConfig` fields, checked in `HamnerConfig.__post_init__`.

A layer with one mixer holds it at `layers.{i}.attn`; a layer with several holds them in a
`ParallelMixers` at `layers.{i}.attn.{name}` (e.g. `layers.0.attn.swa.qkv.weight`).
`hamner.model.transformer.build_mixer` builds a layer's mixers. This package imports torch only when a mixer is
looked up, so `import hamner` (and `hamner.model.config`, which checks names here) stays light.
"""
from __future__ import annotations

from hamner.model.registry import LazyRegistry

MIXERS = LazyRegistry({
    "attention": "hamner.model.mixers.attention:Attention",
    "swa": "hamner.model.mixers.attention:SlidingWindowAttention",
    "diff_attention": "hamner.model.mixers.diff_attention:DifferentialAttention",
    "hebbian": "hamner.model.mixers.hebbian:HebbianMemory",
    "ttt_linear": "hamner.model.mixers.ttt:TTTLinear",
})
