"""Every Triton kernel specialisation a training step launches compiles for real GPUs, without one.

A forward and backward of each preset (one layer: the kernels see the same widths as the full
model), and of the stack options (qk_norm, relu2, value embeddings, U-net skips) at the demo's and at
v3-50m's width with the speedrun's 4x ReLU² MLP, and of the output options that launch kernel variants
of their own (a soft-capped cross-entropy), under fp32, bf16 and fp16 autocast, and the RMSNorm
backward under every tiling a GPU run sweeps, runs the kernels in the interpreter while
`record_launches` notes each launch's specialisation; a subprocess without the interpreter then
compiles every one for sm_80, sm_86, sm_89 and sm_90 with the bundled ptxas and fails on any
compile error or register spill.
"""
import subprocess
from dataclasses import replace

import pytest
import torch

from hamner import kernels
from hamner.kernels.aot import TARGETS, record_launches, save_specs
from hamner.kernels.norms import BWD_CANDIDATES, set_backward_tiling
from hamner.model.config import PRESETS, HamnerConfig, model_config
from hamner.model.transformer import HamnerModel

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KERNELS = {"_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel", "_rms_norm_bwd_tiled_kernel", "_swiglu_fwd_kernel",
           "_swiglu_bwd_kernel", "_relu2_fwd_kernel", "_relu2_bwd_kernel", "_rope_kernel",
           "_cross_entropy_grad_kernel"}
# Model options whose kernels specialise differently from every preset's (at v3-50m's width and vocabulary).
OPTIONS = ({"logit_softcap": 30.0},)


def shallow(config: HamnerConfig) -> HamnerConfig:
    """`config` with as few layers as its options allow: one, or two with value embeddings (one table) or U-net
    skips (the speedrun presets)."""
    stacked = config.value_embeddings > 0 or config.skip == "unet"
    return replace(config, n_layers=2 if stacked else 1, value_embeddings=min(config.value_embeddings, 1))


def training_step_launches() -> list:
    torch.manual_seed(0)
    with record_launches() as recorded:
        options = dict(n_layers=2, qk_norm=True, mlp="relu2", value_embeddings=1, skip="unet")
        configs = [shallow(model_config(preset)) for preset in PRESETS] + [
            replace(model_config("demo"), **options),
            replace(model_config("v3-50m"), intermediate_size=4 * 512, **options)]
        configs += [replace(model_config("v3-50m"), n_layers=1, **fields) for fields in OPTIONS]
        for config in configs:
            model = HamnerModel(config)
            idx = torch.randint(0, config.vocab_size, (1, 17))
            for dtype in DTYPES:
                with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    loss = model(idx[:, :-1], idx[:, 1:])
                loss.backward()
                model.zero_grad(set_to_none=True)
        for tiling in BWD_CANDIDATES:  # the configurations a GPU run sweeps, at v3-50m's width
            with set_backward_tiling(tiling):
                x = torch.randn(64, 512, dtype=torch.bfloat16, requires_grad=True)
                kernels.rms_norm(x, torch.ones(512, dtype=torch.bfloat16, requires_grad=True)).sum().backward()
    return list(recorded.values())


@pytest.mark.triton
def test_every_launched_specialisation_compiles_for_every_target(tmp_path, python, subprocess_env):
    specs = training_step_launches()
    assert KERNELS <= {s.kernel for s in specs}
    assert any("SOFTCAP=True" in s.describe() for s in specs) and any("SOFTCAP=False" in s.describe() for s in specs)
    assert {t for s in specs for t in s.signature.values() if t.startswith("*")} >= {"*fp32", "*bf16", "*fp16"}
    path = tmp_path / "specs.json"
    save_specs(specs, path)
    done = subprocess.run([python, "-m", "hamner.kernels.aot", str(path)], env=subprocess_env,
                          capture_output=True, text=True, timeout=900)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{len(specs)} specialisations x {len(TARGETS)} targets: 0 failed" in done.stdout
