"""The MLPs a block can use after its token mixer, by name.

An MLP is an `nn.Module` built as `cls(config, layer_index)` with `forward(x [B, T, C]) -> [B, T, C]`.
Like mixers (see `hamner.model.mixers`) it may define `init_weights()` for parameters the model's generic
init does not cover and set `aux_loss` in training forwards. The MLP of layer i sits at
`layers.{i}.mlp`; `hamner.model.transformer.build_mlp` builds it. Classes are imported on lookup, so `import hamner`
stays free of torch.
"""
from __future__ import annotations

from hamner.model.registry import LazyRegistry

MLPS = LazyRegistry({
    "swiglu": "hamner.model.mlps.swiglu:SwiGLU",
    "moe": "hamner.model.mlps.moe:MoE",
})
