"""The model: its config and presets, the transformer, token mixers, MLPs, decoding cache and packing.

    config          HamnerConfig, the presets and model files
    transformer     HamnerModel: embeddings, blocks (mixer + MLP), head; forward and cached decoding
    mixers/         the Mixer protocol; attention, sliding-window, differential attention, Hebbian memory,
                    TTT-Linear
    mlps/           the MLP protocol; SwiGLU and mixture-of-experts
    decoding_cache  the per-layer decoding state of cached generation
    packing         document ids and per-document RoPE positions of a packed row
    registry        name -> class tables that import a mixer or MLP only when it is used
    checks          what config checks share (value tests, the `check_config` protocol), torch-free

Importing `hamner.model.config` does not import torch's model code.
"""
