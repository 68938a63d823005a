"""The output-side model options: final-logit soft cap (`logit_softcap`) and an untied, zero-initialised head
(`tie_embeddings = false`) through the model, generation, checkpoints, the loader and the Hugging Face export."""
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoint import save_tiny_run, tiny_config
from train_helpers import assert_compiled_step_matches_eager

from hamner.errors import CheckpointError, ConfigError, ExportError
from hamner.kernels import dispatch, reference
from hamner.model.config import HamnerConfig
from hamner.model.decoding_cache import DecodingCache
from hamner.model.transformer import HamnerModel
from hamner.tournament.sizing import model_size
from hamner.use.generate import generate
from hamner.use.hf import export_hf, load_hf_model
from hamner.use.load import load_model, load_state_file

pytestmark = pytest.mark.usefixtures("single_thread")


def randomised(config: HamnerConfig, seed: int = 0) -> HamnerModel:
    """A model of `config` with every weight random (an untied model's zero head and projections too)."""
    torch.manual_seed(seed)
    model = HamnerModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


# ----- logit_softcap -----

def test_softcap_logits_are_the_capped_plain_logits_and_the_loss_is_their_cross_entropy():
    plain = randomised(tiny_config())
    capped = HamnerModel(tiny_config(logit_softcap=2.0)).eval()
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 257, (2, 12))
    with torch.no_grad():
        raw, logits = plain(idx), capped(idx)
        assert raw.abs().max() > 4 and logits.abs().max() < 2.0
        torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
        loss = capped(idx[:, :-1], idx[:, 1:])
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 257), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_softcap_gradients_match_a_float64_autograd_model():
    """The fused loss path in float32 against plain autograd through the capped float64 logits."""
    model, model64 = randomised(tiny_config(logit_softcap=3.0)), randomised(tiny_config(logit_softcap=3.0)).double()
    idx = torch.randint(0, 257, (2, 10))
    model(idx[:, :-1], idx[:, 1:]).backward()
    F.cross_entropy(model64(idx[:, :-1]).reshape(-1, 257), idx[:, 1:].reshape(-1)).backward()
    grads = [{n: p.grad for n, p in m.named_parameters()} for m in (model, model64)]
    for name, grad in grads[0].items():
        relative = (grad.double() - grads[1][name]).norm() / grads[1][name].norm()
        assert relative < 1e-4, f"{name}: relative gradient error {relative:.2e}"


@pytest.mark.triton
def test_softcap_model_through_the_interpreted_kernel_matches_the_reference_path():
    model = randomised(tiny_config(logit_softcap=2.5)).train()
    idx = torch.randint(0, 257, (2, 9))

    def loss_and_grads():
        model.zero_grad()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    with dispatch.cpu_kernels(False):
        loss_ref, grads_ref = loss_and_grads()
    before = dispatch.launches["fused_linear_cross_entropy"]
    loss, grads = loss_and_grads()
    assert dispatch.launches["fused_linear_cross_entropy"] > before
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        relative = (grad - grads_ref[name]).norm() / grads_ref[name].norm()
        assert relative < 1e-4, f"{name}: relative gradient error {relative:.2e}"


def test_softcap_must_be_positive_and_is_a_model_file_field():
    with pytest.raises(ConfigError, match="logit_softcap must be positive"):
        tiny_config(logit_softcap=0.0)
    with pytest.raises(ConfigError, match="tie_embeddings must be true or false"):
        tiny_config(tie_embeddings=1)
    config = tiny_config(logit_softcap=30.0, tie_embeddings=False)
    assert HamnerConfig.from_dict(config.to_dict()) == config


# ----- tie_embeddings = false -----

def test_untied_head_and_residual_projections_start_at_zero_and_the_model_at_the_uniform_loss():
    tied, untied = HamnerModel(tiny_config()), HamnerModel(tiny_config(tie_embeddings=False))
    assert untied.num_parameters() == tied.num_parameters() + 257 * 64
    zero = {n for n, p in untied.named_parameters() if not p.any()}
    assert zero == {"lm_head.weight"} | {f"layers.{i}.{name}.weight" for i in range(2)
                                         for name in ("attn.out", "mlp.down")}
    assert untied.embed.weight.std() > 0.01 and untied.head_weight is untied.lm_head.weight
    assert tied.lm_head is None and tied.head_weight is tied.embed.weight
    idx = torch.randint(0, 257, (2, 9))
    torch.testing.assert_close(untied(idx[:, :-1], idx[:, 1:]), torch.log(torch.tensor(257.0)))
    decay, _ = untied.param_groups(0.1)
    assert any(p is untied.lm_head.weight for p in decay["params"])
    # The embedding is a lookup, not a matmul: an untied head adds its own FLOPs and no more.
    assert untied.flops_per_token(32) == tied.flops_per_token(32)
    sizes = model_size(tiny_config(), 32), model_size(tiny_config(tie_embeddings=False), 32)
    assert sizes[1].parameters == sizes[0].parameters + 257 * 64
    assert sizes[1].non_embedding == sizes[0].non_embedding


def test_untied_moe_experts_and_relu2_start_with_zero_down_projections():
    model = HamnerModel(tiny_config(tie_embeddings=False, mlp="moe", n_experts=4, moe_intermediate_size=32))
    assert not model.layers[0].mlp.down.any() and model.layers[0].mlp.gate_up.any()
    model = HamnerModel(tiny_config(tie_embeddings=False, mlp="relu2"))
    assert not model.layers[1].mlp.down.weight.any() and model.layers[1].mlp.up.weight.any()


def test_untied_model_learns_from_its_zero_start():
    torch.manual_seed(0)
    model = HamnerModel(tiny_config(tie_embeddings=False)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.arange(33).remainder(7)[None].repeat(4, 1)  # a period-7 pattern
    first = None
    for _ in range(60):
        loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    assert model.layers[0].attn.out.weight.any() and model.layers[1].mlp.down.weight.any()


@pytest.mark.parametrize("fields", [dict(logit_softcap=2.0), dict(tie_embeddings=False),
                                    dict(logit_softcap=2.0, tie_embeddings=False),
                                    dict(logit_softcap=2.0, tie_embeddings=False, mlp="relu2", qk_norm=True,
                                         value_embeddings=1, skip="unet")])
def test_causal_and_cached_decoding_equals_recomputation(fields):
    model = randomised(tiny_config(**fields)).double()
    idx = torch.randint(0, 257, (2, 20))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 257, (2, 11))
    cache = DecodingCache(model, batch_size=2)
    with torch.no_grad():
        full = model(idx)
        torch.testing.assert_close(model(changed)[:, :9], full[:, :9])
        assert not torch.allclose(model(changed)[:, 9:], full[:, 9:])
        torch.testing.assert_close(model(idx[:, :7], cache=cache), full[:, :7])
        for t in range(7, 16):
            torch.testing.assert_close(model(idx[:, t:t + 1], cache=cache)[:, -1], full[:, t])
        torch.testing.assert_close(model(idx[:, 16:], cache=cache), full[:, 16:])
    prompts = [[5, 17, 3, 60, 2], [9, 9, 1, 4, 33]]
    cached = generate(model, prompts, 70, temperature=0)  # past max_seq_len 64: re-prefill too
    assert cached == generate(model, prompts, 70, temperature=0, use_cache=False)


def test_compile_traces_softcap_and_untied_head_in_one_graph():
    config = tiny_config(logit_softcap=2.0, tie_embeddings=False)
    model = randomised(config).train()
    idx = torch.randint(0, 257, (2, 12))
    assert_compiled_step_matches_eager(model, idx[:, :-1], idx[:, 1:])
    compiled = torch.compile(model.eval(), backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx))


def test_untied_checkpoint_and_state_files_load_with_their_head(tmp_path):
    config = tiny_config(tie_embeddings=False, logit_softcap=5.0)
    saved = save_tiny_run(tmp_path / "run", config)
    loaded, loaded_config = load_model(tmp_path / "run")
    assert loaded_config == config and "lm_head.weight" in loaded.state_dict()
    assert all(torch.equal(t, loaded.state_dict()[k]) for k, t in saved.state_dict().items())
    model = randomised(config)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert torch.equal(load_state_file(tmp_path / "weights.pt", config).lm_head.weight, model.lm_head.weight)
    with pytest.raises(CheckpointError, match="not in the model: lm_head.weight"):
        load_state_file(tmp_path / "weights.pt", tiny_config())


def test_untied_head_exports_to_transformers_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_config(tie_embeddings=False)
    model = randomised(config)
    export_hf(model, config, tmp_path / "hf", eos_id=256)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is False
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 257, (2, 20))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    assert float((theirs - ours).norm() / ours.norm()) <= 1e-5
    back, back_config = load_hf_model(tmp_path / "hf")
    assert back_config == config
    assert all(torch.equal(t, back.state_dict()[k]) for k, t in model.state_dict().items())
    hf.save_pretrained(tmp_path / "resaved")  # what transformers itself writes reads back the same
    again, again_config = load_hf_model(tmp_path / "resaved")
    assert again_config == config
    with torch.no_grad():
        assert torch.equal(again(idx), ours)
    # A bare state-dict file in Hugging Face names (no config.json beside it) loads its head too.
    (tmp_path / "llama.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    assert torch.equal(load_state_file(tmp_path / "llama.safetensors", config).lm_head.weight, model.lm_head.weight)


def test_export_refuses_a_softcapped_model_in_one_line(tmp_path):
    config = tiny_config(logit_softcap=30.0)
    with pytest.raises(ExportError, match="logit_softcap = 30.0 has no LlamaConfig equivalent") as info:
        export_hf(HamnerModel(config), config, tmp_path / "hf", eos_id=256)
    assert "\n" not in str(info.value) and not (tmp_path / "hf").exists()


def test_reference_soft_cap_is_identity_without_a_cap():
    x = torch.randn(5)
    assert reference.soft_cap(x, None) is x
