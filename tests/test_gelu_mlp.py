"""GPT-2's GELU MLP: against its equation in float64, its init, its settings check, the export's refusal,
and the tinygpt-50m preset it builds (causality and cached decoding run in test_mixers' VARIANTS)."""
import math

import pytest
import torch

from hamner import kernels
from hamner.errors import ConfigError, ExportError
from hamner.model.config import HamnerConfig, model_config
from hamner.model.mlps import MLPS
from hamner.model.mlps.gelu import GELUMLP
from hamner.model.transformer import HamnerModel
from hamner.train.settings import TrainSettings, resolve_run
from hamner.use.hf import export_hf

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(vocab_size=97, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=4, intermediate_size=128,
            max_seq_len=16, mlp="gelu")


def gpt2_gelu(u: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu, as its code writes it: 0.5 u (1 + tanh(sqrt(2 / pi) (u + 0.044715 u^3)))."""
    return 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u.pow(3))))


def exact_gelu(u: torch.Tensor) -> torch.Tensor:
    """u Phi(u), Phi the standard normal CDF."""
    return u * 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0)))


def random_mlp(**fields) -> GELUMLP:
    torch.manual_seed(0)
    mlp = GELUMLP(HamnerConfig(**{**TINY, **fields}), 0).double()
    with torch.no_grad():  # non-zero biases, so the test sees where they are added
        for p in mlp.parameters():
            p.normal_(0.0, 0.5)
    return mlp


@pytest.mark.parametrize("approximate, gelu", [("tanh", gpt2_gelu), ("none", exact_gelu)])
def test_the_mlp_is_down_gelu_up_with_biases(approximate, gelu):
    mlp = random_mlp(gelu_approximate=approximate)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    expected = gelu(x @ mlp.up.weight.T + mlp.up.bias) @ mlp.down.weight.T + mlp.down.bias
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(kernels.gelu(x, "tanh"), kernels.gelu(x, "none"))


def test_the_gradient_matches_the_equation():
    mlp = random_mlp()
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(mlp(x).sum(), (x, mlp.up.weight, mlp.down.bias))
    ref_out = gpt2_gelu(x @ mlp.up.weight.T + mlp.up.bias) @ mlp.down.weight.T + mlp.down.bias
    theirs = torch.autograd.grad(ref_out.sum(), (x, mlp.up.weight, mlp.down.bias))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_keeps_the_mlp_finite_and_in_bf16():
    mlp = GELUMLP(HamnerConfig(**TINY), 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mlp(torch.randn(2, 4, 32))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_init_zeroes_biases_and_scales_the_residual_projection():
    torch.manual_seed(0)
    model = HamnerModel(HamnerConfig(**{**TINY, "hidden_size": 256, "intermediate_size": 1024, "n_layers": 8},
                                     scale_residual_init=True))
    mlp = model.layers[3].mlp
    assert mlp.up.bias.abs().max() == 0 and mlp.down.bias.abs().max() == 0
    assert mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    names = {n for n, _ in model.named_parameters() if n.startswith("layers.0.mlp.")}
    assert names == {"layers.0.mlp.up.weight", "layers.0.mlp.up.bias", "layers.0.mlp.down.weight",
                     "layers.0.mlp.down.bias"}


def test_a_bad_approximation_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match="gelu_approximate must be one of 'tanh', 'none' for the gelu MLP, "
                                         "got 'erf'") as info:
        HamnerConfig(**TINY, gelu_approximate="erf")
    assert "\n" not in str(info.value)
    assert MLPS.settings("gelu").check_config.__func__ is GELUMLP.check_config.__func__
    HamnerConfig(**{**TINY, "mlp": "swiglu"}, gelu_approximate="erf")  # other MLPs ignore it


def test_export_refuses_the_gelu_mlp_with_one_line(tmp_path):
    config = HamnerConfig(**TINY)
    assert not config.llama_compatible
    with pytest.raises(ExportError, match="cannot export to Hugging Face Llama: the model uses mixer.s. attention "
                                         "and MLP gelu; only attention \\+ swiglu") as info:
        export_hf(HamnerModel(config), config, tmp_path / "hf", eos_id=0)
    assert "\n" not in str(info.value) and not (tmp_path / "hf").exists()


def test_tinygpt_50m_has_the_plans_shape_and_about_50m_parameters():
    config = model_config("tinygpt-50m")
    assert (config.n_layers, config.n_heads, config.n_kv_heads, config.hidden_size, config.intermediate_size,
            config.max_seq_len, config.vocab_size, config.tokenizer, config.mlp) == \
        (8, 8, 8, 512, 2048, 512, 50257, "gpt2", "gelu")
    with torch.device("meta"):
        model = HamnerModel(config)
    # Tied head: embedding 50,257 x 512, per layer qkv 512 x 1536, out 512 x 512, up/down 512 x 2048 + biases,
    # two norms; the final norm.
    per_layer = 512 * 1536 + 512 * 512 + (512 * 2048 + 2048) + (2048 * 512 + 512) + 2 * 512
    assert model.num_parameters() == 50257 * 512 + 8 * per_layer + 512 == 50_926_592


def test_tinygpt_50m_trains_its_curriculum_by_default():
    resolved, curriculum, _ = resolve_run(TrainSettings(preset="tinygpt-50m", device="cpu"))
    assert (resolved.curriculum, resolved.batch_size, resolved.seq_len, resolved.time_budget) == \
        ("tinygpt-cosine", 192, 512, 3 * 3600)
    assert curriculum.data_sources() == ["tinystories"] and curriculum.eval_interval == 400
