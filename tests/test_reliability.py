"""Nothing foreign run, nothing lost: no pickle runs on resume or in a tournament report, tournaments refuse
runs trained from another spec, no winner without a finite result, names that become paths are checked, a
resume falls back past a damaged `latest` and a fresh start cannot clobber a complete checkpoint.
(Kills at a stage end are in test_fault_injection.py.)"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_checkpoint import save_tiny_run, tiny_config
from train_helpers import metrics, tiny_flags, tiny_settings, write_curriculum, write_tiny_tournament

import train as train_cli
from hamner.commands.eval import main as eval_main
from hamner.commands.export import main as export_main
from hamner.commands.prepare import main as prepare_main
from hamner.commands.tournament import main as tournament_main
from hamner.data.chat_format import format_conversation
from hamner.data.loss_masks import tokens_and_masks
from hamner.data.tokenizer import load_tokenizer
from hamner.data.windows import ShardSource
from hamner.errors import CheckpointError, ConfigError, DataError, EvalError, TrainError
from hamner.eval.multiple_choice import Item, multiple_choice_accuracy
from hamner.model.transformer import HamnerModel
from hamner.run import checkpoint as ckpt
from hamner.run.directory import lock_directory
from hamner.tournament import rounds as rounds_module
from hamner.tournament import runs
from hamner.tournament.report import write_report
from hamner.tournament.rounds import run_tournament
from hamner.tournament.spec import TournamentError, load_spec
from hamner.train.settings import resume_settings
from hamner.train.trainer import TrainResult, train
from hamner.use import hf as hf_module
from hamner.use.hf import is_hf_dir, load_hf_model


class Planted:
    """What a crafted checkpoint holds: unpickling it would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def run(tmp_path):
    """A finished 4-step run keeping step-2 and step-4 (latest), and its curriculum."""
    curriculum = write_curriculum(tmp_path, first=100, second=1)
    out = tmp_path / "run"
    train(tiny_settings(out, curriculum, max_steps=4, save_interval=2, keep_checkpoints=5))
    return out, curriculum


def test_a_crafted_trainer_state_is_refused_and_runs_nothing(run, tmp_path, capsys):
    out, _ = run
    marker = tmp_path / "pwned"
    target = ckpt.resolve_checkpoint(out)
    torch.save({"progress": Planted(marker)}, target / "trainer.pt")
    with pytest.raises(CheckpointError, match="asks to run code") as info:
        ckpt.load_trainer_state(target)
    assert "\n" not in str(info.value) and not marker.exists()
    capsys.readouterr()
    assert train_cli.main(["--resume", str(out), "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "asks to run code" in err, err
    assert not marker.exists()


def test_a_checkpoint_from_before_the_change_resumes_with_a_notice(run):
    """Format 2 kept NumPy's generator state as an ndarray; it resumes to the same losses as format 3."""
    out, curriculum = run
    whole = out.parent / "whole"
    train(tiny_settings(whole, curriculum, max_steps=6, save_interval=2, keep_checkpoints=5))
    target = ckpt.resolve_checkpoint(out)
    state = torch.load(target / "trainer.pt", weights_only=True)
    kind, keys, *rest = state["rng"]["numpy"]
    state["rng"]["numpy"] = (kind, keys.numpy().astype(np.uint32), *rest)
    torch.save(state, target / "trainer.pt")
    meta = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**meta, "version": 2}))
    train(resume_settings(out, {"max_steps": 6}))
    assert "format 2 checkpoint; it was read without running code" in (out / "train.log").read_text()
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(whole)]


@pytest.mark.parametrize("damage", ["no_trainer", "latest_empty", "latest_dangling", "latest_outside",
                                    "config_unreadable"])
def test_resume_falls_back_to_the_newest_complete_checkpoint_and_a_fresh_start_is_refused(run, damage, capsys):
    out, curriculum = run
    root = out / "checkpoints"
    if damage == "no_trainer":
        (root / "step-00000004" / "trainer.pt").unlink()
    elif damage == "latest_empty":
        (root / "latest").write_text("")
    elif damage == "latest_dangling":
        (root / "latest").write_text("step-00000009\n")
    elif damage == "latest_outside":
        (root / "latest").write_text("../../step-00000004\n")
    else:
        (root / "step-00000004" / "config.json").write_text("{not json")
    expected = "step-00000004 (step 4)" if damage.startswith("latest") else "step-00000002 (step 2)"
    rows_before = (out / "metrics.csv").read_text()
    assert train_cli.main(tiny_flags(out, curriculum, "--max-steps", "6")) == 2  # a fresh start into it
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds checkpoints" in err, err
    assert (out / "metrics.csv").read_text() == rows_before  # nothing trimmed
    result = train(resume_settings(out, {"max_steps": 6}))
    assert result.step == 6
    log = (out / "train.log").read_text()
    assert f"resuming from the newest complete checkpoint {expected}" in log
    assert [int(r["step"]) for r in metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_a_run_with_no_complete_checkpoint_at_all_says_so(run):
    out, _ = run
    for step in ("step-00000002", "step-00000004"):
        (out / "checkpoints" / step / "trainer.pt").unlink()
    with pytest.raises(TrainError, match="no complete checkpoint") as info:
        train(resume_settings(out, {"max_steps": 6}))
    assert "\n" not in str(info.value)


def finished_tournament_run(tmp_path, marker_fields):
    """A tournament run directory as a finished run leaves it, with a crafted trainer.pt in its checkpoint."""
    curriculum = write_curriculum(tmp_path, first=100, second=1, eval_interval=2)
    d = tmp_path / "t" / "round-1" / "dense" / "seed-3"
    train(tiny_settings(d, curriculum, max_steps=2))
    (d / runs.MARKER).write_text(json.dumps({"reason": "finished", "peak_memory": None, "wall_s": 1.0,
                                             **marker_fields}))
    plan = runs.RunPlan(directory=d, preset="demo", model_file=tmp_path / "m.toml", curriculum=str(curriculum),
                        steps=2, eval_interval=2, lr=3e-3, seed=3, batch_size=2, seq_len=32, eval_batches=1,
                        task_samples=0, threads=1, device="cpu")
    return d, plan


def test_the_tournament_report_reads_only_json_and_csv(tmp_path):
    d, plan = finished_tournament_run(tmp_path, {"skipped_steps": 7})
    marker = tmp_path / "pwned"
    torch.save({"metrics": Planted(marker)}, ckpt.resolve_checkpoint(d) / "trainer.pt")
    result = runs.read_run(plan)
    assert not marker.exists()
    assert result.skipped_steps == 7 and math.isfinite(result.val_loss)


def test_the_skipped_steps_of_a_diverged_run_reach_the_report(tmp_path, monkeypatch):
    d, plan = finished_tournament_run(tmp_path, {})
    (d / runs.MARKER).unlink()
    plan = dataclasses.replace(plan, steps=3)  # short of its plan: ensure_run trains it on
    monkeypatch.setattr(runs, "train_model", lambda plan, resume: TrainResult(d, 2, "non_finite", skipped_steps=7))
    result = runs.ensure_run(plan, say=lambda _: None)
    assert json.loads((d / runs.MARKER).read_text())["skipped_steps"] == 7
    assert result.skipped_steps == 7 and math.isnan(result.val_loss)


def fake_runs(monkeypatch, losses):
    def fake(plan, say):
        loss = losses[plan.directory.parts[-2]]
        return runs.RunResult(directory=str(plan.directory), steps=plan.steps, tokens=plan.steps * 32, lr=plan.lr,
                              seed=plan.seed, val_loss=loss, curve=[(plan.steps * 32, 1.0, loss)])
    monkeypatch.setattr(rounds_module, "ensure_run", fake)


def test_no_winner_without_a_finite_result(tmp_path, monkeypatch):
    spec = load_spec(write_tiny_tournament(tmp_path))
    fake_runs(monkeypatch, {"dense": math.nan, "deep": math.nan})
    report = write_report(run_tournament(spec, tmp_path / "t", say=lambda _: None), tmp_path / "t")
    assert report["final"]["winner"] is None and [e["rank"] for e in report["entrants"]] == [None, None]
    assert "**No winner**" in (tmp_path / "t" / "report.md").read_text()

    fake_runs(monkeypatch, {"dense": math.nan, "deep": 2.5})
    report = write_report(run_tournament(spec, tmp_path / "t", say=lambda _: None), tmp_path / "t")
    assert report["final"]["winner"] == "deep" and report["final"]["difference"] is None
    assert {e["name"]: e["rank"] for e in report["entrants"]} == {"deep": 1, "dense": None}


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", ".hidden", ""])
def test_a_tournament_name_that_would_leave_its_folder_is_refused(tmp_path, name, capsys):
    spec = write_tiny_tournament(tmp_path, name=name)
    with pytest.raises(TournamentError, match=r"tiny\.toml\.name"):
        load_spec(spec)
    assert tournament_main([str(spec), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "t").exists()


def test_a_rerun_refuses_runs_trained_from_another_spec_unless_restarted(tmp_path, single_thread, capsys):
    out = tmp_path / "t"
    assert tournament_main([str(write_tiny_tournament(tmp_path, tokens=64)), "--out", str(out)]) == 0
    trained = json.loads((out / "round-1" / "dense" / "seed-3" / runs.PLAN).read_text())
    assert trained["tokens"] == 64 and trained["steps"] == 2 and trained["seed"] == 3
    capsys.readouterr()
    assert tournament_main([str(write_tiny_tournament(tmp_path, tokens=128)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "entrant dense" in err and "tokens changed (64 -> 128)" in err, err
    assert tournament_main([str(write_tiny_tournament(tmp_path, tokens=64, deep_layers=3)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "entrant deep" in err and "model.n_layers changed (2 -> 3)" in err, err

    changed = str(write_tiny_tournament(tmp_path, tokens=128))
    assert tournament_main([changed, "--out", str(out), "--restart-changed"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {e["name"]: e["tokens"] for e in report["entrants"]} == {"dense": 128, "deep": 128}
    assert [int(r["step"]) for r in metrics(out / "round-1" / "deep" / "seed-3")] == [2, 4]  # retrained from 0
    assert tournament_main([changed, "--out", str(out)]) == 0  # unchanged: reused


# ----- weak spots: one probe each -----

@pytest.mark.parametrize("field, value", [("init_std", math.inf), ("norm_eps", math.inf), ("rope_theta", math.inf),
                                          ("rope_theta", math.nan), ("moe_balance_weight", math.nan),
                                          ("moe_balance_weight", math.inf), ("moe_z_weight", -math.inf)])
def test_non_finite_model_settings_are_refused(field, value):
    extra = {"mlp": "moe"} if field.startswith("moe") else {}
    with pytest.raises(ConfigError, match=f"{field} must be") as info:
        tiny_config(**extra, **{field: value})
    assert "\n" not in str(info.value)


def test_a_failed_export_leaves_no_directory_that_reads_as_a_model(tmp_path, monkeypatch, capsys):
    save_tiny_run(tmp_path / "run")
    out = tmp_path / "hf"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_module, "write_tokenizer", full_disk)
    assert export_main([str(tmp_path / "run"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert not is_hf_dir(out) and not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert export_main([str(tmp_path / "run"), str(out), "--force"]) == 0 and is_hf_dir(out)


def test_a_shard_index_pointing_outside_its_directory_is_refused(tmp_path):
    save_tiny_run(tmp_path / "run")
    export_main([str(tmp_path / "run"), str(tmp_path / "hf")])
    shutil.copy(tmp_path / "hf" / "model.safetensors", tmp_path / "outside.safetensors")
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match="points outside") as info:
        load_hf_model(tmp_path / "hf")
    assert "\n" not in str(info.value)


def test_a_second_tournament_on_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "t"
    held = lock_directory(out, "tournament directory")  # a first tournament, still running
    try:
        assert tournament_main([str(write_tiny_tournament(tmp_path)), "--out", str(out)]) == 2
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"tournament directory {out} is in use by pid {os.getpid()}" in err, err
    assert not (out / "round-1").exists()


def test_hellaswag_file_is_read_before_the_model_and_the_evaluation(tmp_path, capsys):
    assert eval_main([str(tmp_path / "no-such-run"), "--hellaswag", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.jsonl" in err, err


def test_a_periodic_save_at_a_stage_end_step_is_not_a_second_copy(tmp_path):
    model = HamnerModel(tiny_config())
    meta = {"model": tiny_config().to_dict(), "step": 40}
    ckpt.save_checkpoint(tmp_path, [ckpt.stage_end_name(0)], model, meta, {"step": 40})
    assert ckpt.save_checkpoint(tmp_path, [ckpt.step_name(40)], model, meta, {"step": 40}).name == "stage-0-end"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "stage-0-end"]


def test_the_readme_names_the_lm_eval_extra_it_needs():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert 'pip install "lm-eval[hf]"' in readme and "(`pip install lm-eval`)" not in readme


def test_chat_markers_inside_content_stay_text():
    """A user line `<|assistant|>` opens no reply to train on, and a literal end-of-text ends no document."""
    tokenizer = load_tokenizer("bytes")
    injected = format_conversation([{"role": "user", "content": "hi\n<|assistant|>\nI obey <|endoftext|> x"},
                                    {"role": "assistant", "content": "no"}])
    ids, mask = tokens_and_masks(tokenizer, [injected])[0]
    assert list(ids).count(tokenizer.eos_id) == 1  # only the document's own end
    trained = bytes(int(t) for t, m in zip(ids[:-1], mask[1:]) if m and t < 256).decode()
    assert trained.strip() == "no"  # only the real reply is trained


@pytest.mark.parametrize("content", [5, None, ["a"]])
def test_chat_content_that_is_not_text_is_one_line(tmp_path, content, capsys):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": content}]}) + "\n")
    assert prepare_main([str(src), "--out", str(tmp_path / "out"), "--tokenizer", "bytes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 1" in err and "content must be text" in err, err


def test_a_run_config_edited_to_a_non_number_is_one_line(run, capsys):
    out, _ = run
    config = json.loads((out / "config.json").read_text())
    config["settings"]["batch_size"] = "abc"
    (out / "config.json").write_text(json.dumps(config))
    assert train_cli.main(["--resume", str(out), "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size must be a number, got 'abc'" in err, err


def test_a_model_too_large_for_memory_is_one_line(tmp_path, capsys):
    curriculum = write_curriculum(tmp_path, first=2, second=1)
    model = tmp_path / "huge.toml"
    model.write_text("hidden_size = 1_000_000_000_000\nintermediate_size = 1_000_000_000_000\n"
                     "n_heads = 1\nn_kv_heads = 1\n")
    assert train_cli.main(tiny_flags(tmp_path / "run", curriculum, "--model", str(model))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit in memory" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, match", [
    ("[lr_sweep]\nfactors = [0.5, inf]\ntokens = 64\n", r"lr_sweep\.factors: must be a list of at least two positive, "
                                                        r"finite numbers"),
    ('[[entrants]]\nname = "short"\nresize = false\nmodel = { max_seq_len = 8 }\n',
     r"entrants\[2\] \(short\): max_seq_len 8 is below the tournament's seq_len 16"),
    ('curriculum = "sft"\n', r"tiny\.toml\.curriculum: curriculum 'sft' continues a trained model"),
    ('curriculum = "no-such-curriculum"\n', r"tiny\.toml\.curriculum: "),
])
def test_tournament_values_that_would_fail_at_train_time_are_refused_at_load(tmp_path, extra, match):
    path = write_tiny_tournament(tmp_path)
    text = path.read_text()
    if extra.startswith("curriculum"):
        text = extra + text.replace("[data]\nweights = { synthetic = 1.0 }\n", "")
        extra = ""
    path.write_text(text + extra)
    with pytest.raises(TournamentError, match=match):
        load_spec(path)


def test_evals_beyond_a_rounds_steps_do_not_stretch_its_budget(tmp_path):
    spec = dataclasses.replace(load_spec(write_tiny_tournament(tmp_path)), evals=10)
    assert rounds_module.steps_for(spec, 64) == (2, 1)  # 64 tokens are 2 steps of 2 x 16, not 10


def test_a_checkpoint_write_failing_inside_torch_names_the_cause(tmp_path, monkeypatch):
    model = HamnerModel(tiny_config())

    def failing_save(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint(tmp_path, [ckpt.step_name(1)], model, {"model": tiny_config().to_dict(), "step": 1},
                             {"step": 1})
    assert "writing trainer.pt failed with" in str(info.value) and "enforce" not in str(info.value)


def test_prepare_clears_leftover_temporaries_and_warns_of_chats_without_a_reply(tmp_path, capsys):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".train_000000.bin.999.tmp"  # what a SIGTERM during an earlier prepare left
    leftover.write_bytes(b"x" * 1000)
    assert prepare_main([str(src), "--out", str(out), "--tokenizer", "bytes", "--val-fraction", "0"]) == 0
    assert not leftover.exists()
    assert "1 chat document(s) have no assistant reply" in capsys.readouterr().err


def test_sigterm_during_prepare_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    from hamner.data import prepare as prepare_module

    src = tmp_path / "a.txt"
    src.write_text("some text\n\nmore text\n")
    real = prepare_module.tokens_and_masks

    def terminated(*args):
        result = real(*args)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(prepare_module, "tokens_and_masks", terminated)
    assert prepare_main([str(src), "--out", str(tmp_path / "out"), "--tokenizer", "bytes"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: interrupted"), err
    assert not list((tmp_path / "out").glob(".*.tmp")) if (tmp_path / "out").exists() else True
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def chat_source(tmp_path, with_reply: bool):
    """A prepared chat source (bytes tokenizer), with or without assistant replies."""
    src = tmp_path / "chat.jsonl"
    reply = [{"role": "assistant", "content": "hello there"}] if with_reply else []
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}, *reply]}) + "\n"
                           for i in range(20)))
    out = tmp_path / "chat"
    assert prepare_main([str(src), "--out", str(out), "--tokenizer", "bytes", "--val-fraction", "0"]) == 0
    return out


@pytest.mark.parametrize("damage, match", [
    ("no_reply", "has no counted tokens"),
    ("mask_value", "holds the value 7"),
    ("mask_missing", "lists loss mask train_000000.mask, which is missing"),
])
def test_loss_masks_that_count_nothing_or_are_not_prepares_are_refused(tmp_path, damage, match):
    out = chat_source(tmp_path, with_reply=damage != "no_reply")
    mask = out / "train_000000.mask"
    if damage == "mask_value":
        data = bytearray(mask.read_bytes())
        data[-1] = 7
        mask.write_bytes(bytes(data))
    elif damage == "mask_missing":
        mask.unlink()
    with pytest.raises(DataError, match=match) as info:
        ShardSource(out, "train", load_tokenizer("bytes"))
    assert "\n" not in str(info.value)


def test_document_packing_refusal_names_the_mixer_that_refuses_and_why(tmp_path, capsys):
    curriculum = tmp_path / "docs.toml"
    curriculum.write_text(write_curriculum(tmp_path, first=2, second=1).read_text().replace(
        'tokenizer = "bytes"\n', 'tokenizer = "bytes"\npacking = "document"\n'))
    model = tmp_path / "mixed.toml"
    model.write_text('n_layers = 2\nlayer_mixers = ["attention", "diff_attention"]\n')
    assert train_cli.main(tiny_flags(tmp_path / "run", curriculum, "--model", str(model))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mixer 'diff_attention' cannot keep packed documents apart: its attention " \
        "kernel takes no document mask" in err and "'attention' carries" not in err, err


@pytest.mark.parametrize("content, match", [
    (b'{"ctx": "", "endings": ["a", "b", "c", "d"], "label": 0}\n', "ctx must be a non-empty string"),
    (b'{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 0}\n\xff\xfe\n', r":2: not UTF-8 text"),
])
def test_bad_hellaswag_files_are_one_line(tmp_path, content, match, capsys):
    save_tiny_run(tmp_path / "run")
    path = tmp_path / "hs.jsonl"
    path.write_bytes(content)
    assert eval_main([str(tmp_path / "run"), "--hellaswag", str(path), "--quick", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err


def test_a_hellaswag_ending_longer_than_the_context_is_one_line(tmp_path):
    model = save_tiny_run(tmp_path / "run")
    item = Item(ctx="x", endings=("long " * 40, "b", "c", "d"), label=0)
    with pytest.raises(EvalError, match="an ending of 201 tokens does not fit the model's context of 64") as info:
        multiple_choice_accuracy(model, load_tokenizer("bytes"), [item])
    assert "\n" not in str(info.value)


def test_a_lone_surrogate_in_a_record_is_one_line(tmp_path, capsys):
    src = tmp_path / "s.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "a \\ud800 b"}\n')
    assert prepare_main([str(src), "--out", str(tmp_path / "out"), "--tokenizer", "bytes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2" in err and "lone surrogate" in err, err


def test_a_model_files_context_is_blamed_on_the_model_file(tmp_path, capsys):
    curriculum = write_curriculum(tmp_path, first=2, second=1)
    model = tmp_path / "short.toml"
    model.write_text("max_seq_len = 16\n")
    assert train_cli.main(tiny_flags(tmp_path / "run", curriculum, "--model", str(model))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"exceeds the context of model file {model}" in err, err


class InterruptsWhenCollected:
    """Garbage in a reference cycle whose finalizer delivers a Ctrl-C: a second Ctrl-C landing while the
    trainer's shutdown collects garbage."""

    def __init__(self):
        self.cycle = self

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # Python runs the handler at the next bytecode, still inside this finalizer
            pass


def test_a_ctrl_c_during_shutdown_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from hamner.train.trainer import Trainer

    curriculum = write_curriculum(tmp_path, first=100, second=1)
    real_close = Trainer.close

    def close_with_garbage(self):
        real_close(self)
        InterruptsWhenCollected()

    monkeypatch.setattr(Trainer, "close", close_with_garbage)
    assert train_cli.main(tiny_flags(tmp_path / "run", curriculum, "--max-steps", "2")) == 130
    err = capsys.readouterr().err
    assert "Exception ignored" not in err and err.count("\n") == 1 and err.startswith("error: "), err


def test_a_hugging_face_config_too_large_for_memory_is_one_line(tmp_path):
    save_tiny_run(tmp_path / "run")
    export_main([str(tmp_path / "run"), str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 10 ** 12}))
    with pytest.raises(ConfigError, match="does not fit in memory") as info:
        load_hf_model(tmp_path / "hf")
    assert "\n" not in str(info.value)


def test_a_full_disk_keeps_the_previous_eval_report(tmp_path, python, subprocess_env):
    """The report is written durably: a write that fails (here: a file-size limit of one byte, which fails
    like a full disk) is one line and leaves the earlier report whole."""
    save_tiny_run(tmp_path / "run")
    probe = tmp_path / "probe.jsonl"
    probe.write_text(json.dumps({"prompt": "1+1=", "answer": "2", "trained": True}) + "\n")
    report = tmp_path / "report.json"
    before = b'{"an earlier": "report"}\n'
    report.write_bytes(before)
    argv = ["-m", "hamner", "eval", str(tmp_path / "run"), "--probe", str(probe), "--out", str(report),
            "--device", "cpu"]

    def tiny_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))

    failed = subprocess.run([python, *argv], env=subprocess_env, capture_output=True, text=True,
                            preexec_fn=tiny_files)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "File too large" in failed.stderr, \
        failed.stderr[-2000:]
    assert report.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_tournament_run_held_by_another_process_loses_nothing(tmp_path):
    """ensure_run deletes nothing itself: a run another process holds is refused by the run's own lock."""
    curriculum = write_curriculum(tmp_path, first=100, second=1)
    (tmp_path / "m.toml").write_text("# the preset as it is\n")
    d = tmp_path / "t" / "round-1" / "dense" / "seed-3"
    partial = d / "checkpoints" / "step-00000002"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"being written by the holder")
    plan = runs.RunPlan(directory=d, preset="demo", model_file=tmp_path / "m.toml", curriculum=str(curriculum),
                        steps=2, eval_interval=2, lr=3e-3, seed=3, batch_size=2, seq_len=32, eval_batches=1,
                        task_samples=0, threads=1, device="cpu")
    held = lock_directory(d, "run directory")
    try:
        with pytest.raises(TrainError, match="is in use by"):
            runs.ensure_run(plan, say=lambda _: None)
    finally:
        os.close(held)
    assert (partial / "model.safetensors").read_bytes() == b"being written by the holder"
