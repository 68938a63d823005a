"""Warm-ups as curriculum schedules: a stage's `seq_len = [start, end]` and a sliding-window model's
`model = { window = [start, end] }`. The format and its one-line errors, the ramp values over a stage,
the run-time window in the attention (a tensor: SDPA band mask, FlexAttention block mask) against the
fixed window, cached decoding, torch.compile without recompiles, training, and the token counts and ETAs
that follow the growing steps (exact resume mid-ramp: test_resume.py)."""
import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from train_helpers import metrics, tiny_settings

from hamner.errors import CurriculumError
from hamner.kernels import attention_dispatch, reference
from hamner.kernels.attention_dispatch import attention
from hamner.model.config import HamnerConfig
from hamner.model.decoding_cache import DecodingCache
from hamner.model.transformer import HamnerModel
from hamner.run.status import StagePlan
from hamner.train.curriculum.controller import CurriculumController
from hamner.train.curriculum.spec import SEQ_LEN_MULTIPLE, load_curriculum
from hamner.train.run_record import run_status, stage_plan
from hamner.train.trainer import train
from hamner.use.load import load_model

pytestmark = pytest.mark.usefixtures("single_thread")

STAGES = """\
name = "warmup"
tokenizer = "bytes"

[[stages]]
name = "ramp"
steps = {steps}
weights = {{ synthetic = 1.0 }}
difficulty = 1
lr = 3e-3
seq_len = {seq_len}
{model}
[[stages]]
name = "after"
steps = 3
weights = {{ synthetic = 1.0 }}
difficulty = 1
lr = 1e-3
"""


def write(tmp_path: Path, steps: int = 9, seq_len: str = "[16, 64]", model: str = "") -> Path:
    path = tmp_path / "warmup.toml"
    path.write_text(STAGES.format(steps=steps, seq_len=seq_len, model=model))
    return path


def swa_model_file(tmp_path: Path, window: int = 12) -> Path:
    path = tmp_path / "swa.toml"
    path.write_text(f'mixer = "swa"\nwindow = {window}\nn_layers = 2\n')
    return path


# ----- the format -----

def test_ramps_parse_and_the_command_line_length_clears_them(tmp_path):
    curriculum = load_curriculum(write(tmp_path, model="model = { window = [4, 12] }"))
    ramp, after = curriculum.stages
    assert (ramp.seq_len_start, ramp.seq_len, ramp.model_ramps) == (16, 64, {"window": (4, 12)})
    assert (after.seq_len_start, after.seq_len, after.model_ramps) == (None, None, {})
    fixed = load_curriculum(write(tmp_path, seq_len="32", model="model = { window = 8 }")).stages[0]
    assert (fixed.seq_len_start, fixed.seq_len, fixed.model_ramps) == (None, 32, {"window": (8, 8)})
    cleared = curriculum.with_recipe(seq_len=32).stages[0]
    assert (cleared.seq_len_start, cleared.seq_len) == (None, None)


@pytest.mark.parametrize("seq_len, model, message", [
    ("[64, 32]", "", r"stages\[0\]\.seq_len: a ramp \[start, end\] must not shrink: start 64 exceeds end 32$"),
    ("[16.0, 32]", "", r"stages\[0\]\.seq_len: must be a whole number >= 1 or a \[start, end\] ramp of them"),
    ("[16, 32, 48]", "", r"stages\[0\]\.seq_len: must be a whole number >= 1 or a \[start, end\] ramp of them"),
    ("[20, 64]", "", rf"stages\[0\]\.seq_len: a ramp's ends must be multiples of {SEQ_LEN_MULTIPLE}, got \[20, 64\]"),
    ("32", "model = { window = [8, 4] }", r"stages\[0\]\.model\.window: a ramp \[start, end\] must not shrink"),
    ("32", 'model = { window = [2, "x"] }', r"stages\[0\]\.model\.window: must be a whole number >= 1"),
    ("32", "model = { window = 0 }", r"stages\[0\]\.model\.window: must be a whole number >= 1"),
])
def test_bad_ramps_are_one_line_errors_naming_the_field(tmp_path, seq_len, model, message):
    with pytest.raises(CurriculumError, match=message) as caught:
        load_curriculum(write(tmp_path, seq_len=seq_len, model=model))
    assert "\n" not in str(caught.value)


def test_the_model_and_its_context_bound_the_ramps(tmp_path):
    with pytest.raises(CurriculumError, match=r"stages\[0\]\.seq_len: 512 exceeds the model's context"):
        load_curriculum(write(tmp_path, seq_len="[64, 512]")).check_seq_len(256)
    curriculum = load_curriculum(write(tmp_path, model="model = { window = [4, 16] }"))
    dense = HamnerModel(HamnerConfig(vocab_size=97, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                     intermediate_size=64, max_seq_len=64))
    with pytest.raises(CurriculumError, match=r"stages\[0\]\.model\.window: the model has no knob 'window'"):
        curriculum.check_model_knobs(dense.check_knob)
    swa = HamnerModel(HamnerConfig(vocab_size=97, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                   intermediate_size=64, max_seq_len=64, mixer="swa", window=12))
    with pytest.raises(CurriculumError, match=r"stages\[0\]\.model\.window: window must be a whole number in "
                                              r"1\.\.12 \(the model's window is the largest\), got 16$"):
        curriculum.check_model_knobs(swa.check_knob)


def test_a_window_ramp_on_a_model_without_swa_stops_the_run_before_it_starts(tmp_path):
    curriculum = write(tmp_path, seq_len="32", model="model = { window = [4, 8] }")
    with pytest.raises(CurriculumError, match=r"model\.window: the model has no knob 'window'"):
        train(tiny_settings(tmp_path / "run", curriculum, seq_len=None))
    assert not (tmp_path / "run" / "metrics.csv").exists()


# ----- the controller -----

def test_ramps_run_linearly_over_the_stage_and_hold_their_end_afterwards(tmp_path):
    ctrl = CurriculumController(load_curriculum(write(tmp_path, model="model = { window = [2, 10] }")))
    lengths, windows, ahead = [], [], [ctrl.seq_len(steps_ahead=i) for i in range(9)]
    while ctrl.stage_index == 0:
        lengths.append(ctrl.seq_len())
        windows.append(ctrl.ramped_knobs()["window"])
        assert ctrl.model_knobs() == {"window": windows[-1]}
        ctrl.step_done()
        if ctrl.should_advance():
            ctrl.advance()
    # start + (end - start) x step / 8, rounded down to a multiple of 16 above the start; the window by whole tokens
    assert lengths == ahead == [16, 16, 16, 32, 32, 32, 48, 48, 64]
    assert windows == list(range(2, 11))
    assert ctrl.seq_len() is None and ctrl.ramped_knobs() == {} and ctrl.model_knobs() == {"window": 10}


def test_a_resumed_controller_continues_the_ramps(tmp_path):
    curriculum = load_curriculum(write(tmp_path, model="model = { window = [2, 10] }"))
    ctrl = CurriculumController(curriculum)
    for _ in range(5):
        ctrl.step_done()
    resumed = CurriculumController(curriculum)
    resumed.load_state_dict(json.loads(json.dumps(ctrl.state_dict())))
    assert (resumed.seq_len(), resumed.model_knobs()) == (ctrl.seq_len(), ctrl.model_knobs()) == (32, {"window": 7})


# ----- the attention -----

@pytest.mark.parametrize("tq, tk, window", [(9, 9, 3), (9, 9, 1), (9, 9, 20), (4, 11, 5), (1, 11, 5)])
def test_a_window_tensor_attends_exactly_as_the_same_int(tq, tk, window):
    torch.manual_seed(0)
    q = torch.randn(2, tq, 4, 16, dtype=torch.float64)
    k, v = (torch.randn(2, tk, 2, 16, dtype=torch.float64) for _ in range(2))
    assert torch.equal(reference.causal_mask(tq, tk, torch.tensor(window)), reference.causal_mask(tq, tk, window))
    torch.testing.assert_close(attention(q, k, v, window=torch.tensor(window)), attention(q, k, v, window=window))


@pytest.mark.parametrize("n, window", [(40, 7), (40, 1), (150, 130), (33, 64)])
def test_the_flex_path_equals_the_sdpa_band_path(n, window):
    """FlexAttention (what CUDA runs) on the CPU, forward only (it has no CPU backward): its sliding-window
    block mask attends as the band mask."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, n, heads, 16) for heads in (4, 2, 2))
    out = attention_dispatch._flex_window(q, k, v, torch.tensor(window))
    torch.testing.assert_close(out, attention(q, k, v, window=window), rtol=1e-5, atol=1e-5)


def test_flex_block_masks_are_cached_per_window_value_and_built_inside_a_compiled_graph():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 24, 2, 8) for _ in range(3))
    window = torch.tensor(5)
    attention_dispatch._WINDOW_MASKS.clear()
    attention_dispatch._flex_window(q, k, v, window)
    attention_dispatch._flex_window(q, k, v, window)
    assert len(attention_dispatch._WINDOW_MASKS) == 1  # the next step at the same window reuses it
    window.fill_(9)
    torch.testing.assert_close(attention_dispatch._flex_window(q, k, v, window), attention(q, k, v, window=9))
    assert len(attention_dispatch._WINDOW_MASKS) == 2  # a new value, a new mask

    counter = CompileCounter()
    compiled = torch.compile(attention_dispatch._flex_window, backend=counter, fullgraph=True)
    for value in (3, 5, 11):
        torch.testing.assert_close(compiled(q, k, v, torch.tensor(value)), attention(q, k, v, window=value),
                                   rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_a_run_time_window_through_flex_attention(monkeypatch):
    torch.manual_seed(2)
    leaves = [torch.randn(2, 300, heads, 64, device="cuda", requires_grad=True) for heads in (4, 2, 2)]
    window = torch.tensor(100, device="cuda")
    calls = []
    flex = attention_dispatch._flex_window
    monkeypatch.setattr(attention_dispatch, "_flex_window", lambda *a: calls.append(1) or flex(*a))
    out = attention(*leaves, window=window)
    assert calls == [1]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    expected = reference.attention(*leaves64, window=100)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    for t, t64 in zip(leaves, leaves64):
        torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-3, atol=1e-3)


# ----- the sliding-window mixer's knob -----

def random_swa(window: int = 6, seed: int = 0) -> HamnerModel:
    torch.manual_seed(seed)
    config = HamnerConfig(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
                          max_seq_len=40, init_std=0.3, mixer="swa", window=window)
    return HamnerModel(config).double().eval()


def test_a_narrowed_window_is_the_model_of_that_window_and_checkpoints_carry_it():
    wide = random_swa(window=6)
    wide.set_knob("window", 3)
    narrow = random_swa(window=3)
    narrow.load_state_dict(wide.state_dict())
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(wide(idx), narrow(idx))
        assert not torch.allclose(wide(idx), random_swa(window=6)(idx))

    again = random_swa(window=6)
    again.load_state_dict(wide.state_dict())  # the checkpoint carries the window now
    assert [m.window_now for m in again.modules() if hasattr(m, "window_now")] == [3, 3]
    legacy = {k: v for k, v in wide.state_dict().items() if not k.endswith("current_window")}
    again.load_state_dict(legacy)  # saved before the knob: the whole window
    assert [(m.window_now, m.narrowed) for m in again.modules() if hasattr(m, "window_now")] == [(6, False)] * 2
    with torch.no_grad():
        torch.testing.assert_close(again(idx), random_swa(window=6)(idx))


def test_cached_decoding_with_a_narrowed_window_equals_recomputation():
    model = random_swa(window=8)
    model.set_knob("window", 3)
    idx = torch.randint(0, 97, (2, 20))
    cache = DecodingCache(model, batch_size=2)
    with torch.no_grad():
        full = model(idx)
        torch.testing.assert_close(model(idx[:, :7], cache=cache), full[:, :7])
        for t in range(7, 16):
            torch.testing.assert_close(model(idx[:, t:t + 1], cache=cache)[:, -1], full[:, t])
        torch.testing.assert_close(model(idx[:, 16:], cache=cache), full[:, 16:])
    assert all(state.k.shape[1] == 2 for state in cache.states)  # the cache keeps window_now - 1 keys


def test_a_compiled_model_takes_a_changing_window_without_recompiling_or_graph_breaks():
    model = random_swa(window=8).float().train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    idx = torch.randint(0, 97, (2, 16))
    for window in (2, 3, 5, 7):
        model.set_knob("window", window)
        torch.testing.assert_close(compiled(idx, idx), model(idx, idx))
    assert counter.frame_count == 1


def test_a_compiled_model_takes_a_growing_sequence_length_with_one_recompile():
    """PyTorch's automatic dynamic shapes: the second length makes the length dimension dynamic."""
    model = random_swa(window=8).float().train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    model.set_knob("window", 4)
    for length in (8, 16, 24, 32):
        idx = torch.randint(0, 97, (2, length))
        torch.testing.assert_close(compiled(idx, idx), model(idx, idx))
    assert counter.frame_count <= 2



def test_compiled_full_attention_traces_a_growing_sequence_length_through_sdpa():
    """Traced for real (aot_eager: fake tensors, symbolic lengths), full causal attention with a dynamic length
    still hands SDPA a plain bool for is_causal (a length comparison would be a SymBool)."""
    torch.manual_seed(0)
    config = HamnerConfig(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
                          max_seq_len=40)
    model = HamnerModel(config).float().train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    for length in (8, 16, 24):
        idx = torch.randint(0, 97, (2, length))
        torch.testing.assert_close(compiled(idx, idx), model(idx, idx))


# ----- training -----

def test_training_ramps_the_rows_and_the_window_and_counts_the_tokens(tmp_path):
    curriculum = write(tmp_path, steps=5, seq_len="[16, 48]", model="model = { window = [4, 12] }")
    result = train(tiny_settings(tmp_path / "run", curriculum, seq_len=None, model=str(swa_model_file(tmp_path))))
    assert result.reason == "finished" and result.step == 8
    tokens = [int(r["tokens"]) for r in metrics(tmp_path / "run")]
    steps = [b - a for a, b in zip([0] + tokens, tokens)]
    # batch 2 x [16, 16, 32, 32, 48] in the ramp, then the demo preset's 128 tokens per row
    assert steps == [32, 32, 64, 64, 96, 256, 256, 256]
    model, _ = load_model(tmp_path / "run")
    assert [m.window_now for m in model.modules() if hasattr(m, "window_now")] == [12, 12]
    stages = json.loads((tmp_path / "run" / "evals" / "metadata.json").read_text())["stages"]
    assert [(st["seq_len_start"], st["seq_len"], st["model_ramps"]) for st in stages] == [
        (16, 48, {"window": [4, 12]}), (None, 128, {})]
    ramp_end, _ = load_model(tmp_path / "run" / "checkpoints" / "stage-0-end")
    assert [int(m.current_window) for m in ramp_end.modules() if hasattr(m, "window_now")] == [12, 12]


# ----- status -----

def test_planned_tokens_follow_the_ramp_and_the_recipe(tmp_path):
    plan = StagePlan("ramp", steps=9, tokens_per_step=(32, 128))
    per_step = [32 + 96 * i / 8 for i in range(9)]
    assert plan.tokens(0, 9, 9) == pytest.approx(sum(per_step))
    assert plan.tokens(3, 7, 9) == pytest.approx(sum(per_step[3:7]))
    curriculum = load_curriculum(write(tmp_path))
    record = {"settings": {"seq_len": None}, "resolved": {"batch_size": 2, "grad_accum": 3, "seq_len": 128},
              "world_size": 2}
    assert [p.tokens_per_step for p in stage_plan(curriculum, record)] == [(192, 768), (1536, 1536)]
    forced = {**record, "settings": {"seq_len": 32}, "resolved": {**record["resolved"], "seq_len": 32}}
    assert [p.tokens_per_step for p in stage_plan(curriculum, forced)] == [(384, 384)] * 2
    assert [p.tokens_per_step for p in stage_plan(curriculum)] == [None, None]


def test_status_of_a_ramped_run_counts_its_tokens(tmp_path):
    train(tiny_settings(tmp_path / "run", write(tmp_path, steps=5, seq_len="[16, 48]"), seq_len=None))
    status = run_status(tmp_path / "run")
    assert (status.state, status.total_steps, status.tokens) == ("finished", 8, 2 * (16 + 16 + 32 + 32 + 48) + 3 * 256)
