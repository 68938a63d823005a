"""Each shipped recipe reads as its original project's document does: the numbers that decide what a run trains
(LR, warm-up, steps, batch, sequence length, evaluation interval, parameter count, the metric of early stop and of
the best checkpoint), taken from the curriculum and preset exactly as `python train.py` resolves them."""
import math

import pytest
import torch

from hamner import HamnerModel, model_config
from hamner.train.settings import TrainSettings, resolve_run


def resolved(preset: str, curriculum: str | None = None):
    run, plan, _ = resolve_run(TrainSettings(preset=preset, curriculum=curriculum, device="cpu"))
    return run, plan


def parameters(preset: str, **overrides) -> int:
    config = model_config(preset)
    for name, value in overrides.items():
        setattr(config, name, value)
    with torch.device("meta"):
        return HamnerModel(config).num_parameters()


def test_the_ttt_length_study_trains_at_w_64_and_follows_ppl_at_1w():
    run, plan = resolved("ttt-125m", "ttt-extended")
    (stage,) = plan.stages
    assert (run.seq_len, run.batch_size, run.grad_accum) == (64, 8, 4)  # W = 64; batch 8 x grad-accum 4
    assert (stage.lr, stage.schedule, stage.max_steps) == (3e-4, "cosine", 100_000)
    assert stage.warmup_steps == 0.02 * stage.max_steps  # 2 % warm-up
    assert run.eval_interval == 2_041 and plan.save_initial_checkpoint  # 50 checkpoints + the untrained step 0
    length = next(e for e in plan.evaluations if e.kind == "length_gen")
    assert (length.window, length.chunk, length.stride, length.multiples, length.at_start) == \
        (64, 16, 16, (1, 2, 5, 10, 20), True)  # Chunk PPL (K = S = 16) at 1/2/5/10/20 x W, up to T = 1280
    assert max(length.multiples) * length.window == 1280 == 20 * run.seq_len
    rule = stage.early_stop
    assert (rule.metric, rule.mode, rule.min_delta, rule.patience) == ("length_ppl@1W", "min", 50.0, 10)
    assert (plan.keep_best.metric, plan.keep_best.mode) == ("length_ppl@1W", "min")


def test_ttt_125m_is_the_authors_125m_model_on_hamners_vocabulary():
    """The authors' 125M TTT-Linear counted on the meta device is 110,276,688 parameters at Llama-2's 32,000
    tokens; Hamner's layers are the same, parameter for parameter, so the only difference is the cosmo2
    vocabulary (README, "ttt-125m's size"; no switch of the reference code gives the quoted 152.6M)."""
    assert parameters("ttt-125m") == 123_449_424
    assert parameters("ttt-125m", vocab_size=32_000) == 110_276_688
    assert parameters("ttt-125m") - parameters("ttt-125m", vocab_size=32_000) == (49_152 - 32_000) * 768


def test_tiny_gpts_plan():
    config = model_config("tinygpt-50m")
    assert (config.n_layers, config.n_heads, config.hidden_size, config.intermediate_size, config.mlp,
            config.max_seq_len, config.vocab_size) == (8, 8, 512, 2048, "gelu", 512, 50_257)
    assert parameters("tinygpt-50m") == 50_926_592  # ~50M
    run, plan = resolved("tinygpt-50m")
    (stage,) = plan.stages
    assert (run.curriculum, run.batch_size, run.seq_len) == ("tinygpt-cosine", 192, 512)
    assert (stage.lr, stage.warmup_steps, stage.steps, stage.decay_steps) == (3e-4, 1_000, 60_000, 54_000)
    assert math.isclose(stage.lr * stage.min_lr_ratio, 3e-5)  # cosine to 3e-5 by step 54,000, then flat to 60,000
    assert run.eval_interval == 400 and run.time_budget == 3 * 3600  # an evaluation per 400-step epoch; 3 hours
    assert (plan.keep_best.metric, plan.keep_best.mode) == ("val_loss", "min")


def test_the_4_phase_warm_start_at_batch_32():
    run, plan = resolved("v2-164m", "hamner-4phase")
    assert (run.batch_size, run.seq_len) == (32, 1024)
    assert [s.name for s in plan.stages] == ["structure", "stories", "voice", "polish"]
    steps = sum(s.steps for s in plan.stages)
    assert steps == 32_000 and math.isclose(steps * 32 * 1024 / 1e9, 1.05, abs_tol=0.01)  # ~1.05B tokens
    assert plan.requires_init


def test_agiformer_validates_every_200_steps_and_keeps_the_best_bits_per_byte():
    run, plan = resolved("agiformer-31m", "agiformer-3stage")
    assert run.eval_interval == 200 and plan.bits_per_byte and plan.tokenizer == "bytes"
    assert (plan.keep_best.metric, plan.keep_best.mode) == ("val_bpc", "min")
    assert [s.model_knobs["plasticity"] for s in plan.stages] == [0.10, 0.50, 0.99]
    config = model_config("agiformer-31m")
    assert config.hebbian_bias and config.hebbian_out_norm  # the memory's biased projections and output norm
    assert parameters("agiformer-31m") == 31_024_176


def test_the_v2_pretraining_run():
    run, plan = resolved("v2-164m", "hamner-v2")
    (stage,) = plan.stages
    assert plan.data_sources() == ["fineweb"] and (run.batch_size, run.seq_len) == (24, 1024)
    assert (stage.lr, stage.warmup_steps, stage.steps, stage.schedule, stage.min_lr_ratio) == \
        (2e-4, 2_000, 400_000, "cosine", 0.1)


@pytest.mark.parametrize("preset", ["v3-50m", "demo"])
def test_the_seed_presets_are_untouched(preset):
    """The recipes above are new keys and presets; the seed presets keep their defaults."""
    run, plan = resolved(preset)
    assert (run.batch_size, run.grad_accum) == ({"v3-50m": 24, "demo": 12}[preset], 1)
    assert run.seq_len == {"v3-50m": 1024, "demo": 128}[preset]
