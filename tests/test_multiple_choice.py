"""HellaSwag-format multiple choice: reading the file, scoring endings, both accuracies."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_checkpoint import save_tiny_run, tiny_config

from hamner.commands import eval as eval_cli
from hamner.commands.eval import main as eval_main
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import EvalError
from hamner.eval.multiple_choice import Item, ending_log_probs, load_items, multiple_choice_accuracy
from hamner.model.transformer import HamnerModel

BYTES = load_tokenizer("bytes")


class Prefers(HamnerModel):
    """A stand-in model whose next-token logits favour one byte everywhere (log-prob 0 vs about -20)."""

    def __init__(self, byte: int) -> None:
        super().__init__(tiny_config())
        self.byte = byte

    def forward(self, idx, targets=None, **kwargs):
        logits = torch.full((*idx.shape, self.config.vocab_size), -20.0)
        logits[..., self.byte] = 20.0
        return logits


def test_items_load_with_clear_errors(tmp_path):
    good = {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": "2"}
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "label": 1}) + "\n")
    assert load_items(path) == [Item("A man", ("a", "b", "c", "d"), 2), Item("A man", ("a", "b", "c", "d"), 1)]
    assert len(load_items(path, limit=1)) == 1
    path.write_text(json.dumps({**good, "endings": ["a", "b"]}) + "\n")
    with pytest.raises(EvalError, match=r"mc.jsonl:1: endings must be a list of 4"):
        load_items(path)
    path.write_text(json.dumps({**good, "label": 4}) + "\n")
    with pytest.raises(EvalError, match=r"mc.jsonl:1: label must be 0..3"):
        load_items(path)


def test_sum_and_length_normalised_scores_pick_different_endings():
    model = Prefers(ord("z")).eval()
    # Every byte other than "z" costs about 40 nats; "z" costs nothing. The space before each
    # ending is one such byte, so ending 0 (" zzzzzz") costs 40 in all, 40 / 7 per token; ending 1
    # (" zq") 80, 80 / 3 per token; ending 2 (" zzzzzzzzzzzzzzzq") 80, 80 / 17 per token; ending 3 120.
    item = Item("ctx", ("zzzzzz", "zq", "zzzzzzzzzzzzzzzq", "qq"), label=0)
    scores = ending_log_probs(model, BYTES, item)
    assert [n for _, n in scores] == [7, 3, 17, 3]
    assert scores[0][0] == pytest.approx(-40.0, abs=0.01) and scores[1][0] == pytest.approx(-80.0, abs=0.01)
    by_sum = Item("ctx", item.endings, label=0)
    by_mean = Item("ctx", item.endings, label=2)
    result = multiple_choice_accuracy(model, BYTES, [by_sum, by_mean])
    # By total log-probability ending 0 wins both items; per token ending 2 (80 / 17 < 40 / 7) wins both.
    assert result == {"items": 2, "accuracy": 0.5, "accuracy_norm": 0.5}


def test_a_long_context_keeps_the_ending_whole():
    model = Prefers(ord("z")).eval()
    item = Item("x" * 500, ("zz", "qz", "zq", "qq"), label=0)  # far past the 64-token context
    scores = ending_log_probs(model, BYTES, item)
    assert [n for _, n in scores] == [3, 3, 3, 3]
    assert max(range(4), key=lambda i: scores[i][0]) == 0


def test_eval_reports_both_accuracies(tmp_path, capsys, monkeypatch):
    save_tiny_run(tmp_path / "run")
    # The other sections are tested with the eval command; here they are left empty to stay fast.
    monkeypatch.setattr(eval_cli, "evaluate", lambda *args, **kwargs: {
        "validation": {}, "synthetic": {"samples": 1, "accuracy": {"arithmetic": {"1": 0.0}}}, "needle": [],
        "length_generalisation": {"stream": "none", "window": 64, "trained_context": 64, "rows": []}})
    items = tmp_path / "mc.jsonl"
    items.write_text("".join(json.dumps({"ctx": f"Item {i}:", "endings": ["a", "bb", "c", "dd"], "label": i % 4}) + "\n"
                             for i in range(3)))
    flags = [str(tmp_path / "run"), "--quick", "--samples", "1", "--difficulties", "1", "--device", "cpu",
             "--out", str(tmp_path / "eval.json")]
    assert eval_main([*flags, "--hellaswag", str(items)]) == 0
    choice = json.loads((tmp_path / "eval.json").read_text())["multiple_choice"]
    assert choice["items"] == 3 and 0 <= choice["accuracy"] <= 1 and 0 <= choice["accuracy_norm"] <= 1
    assert "length-normalised" in capsys.readouterr().out
    items.write_text('{"ctx": "x", "endings": ["a"], "label": 0}\n')
    assert eval_main([*flags, "--hellaswag", str(items)]) == 2
    assert "endings must be a list of 4" in capsys.readouterr().err


def _items(path):
    path.write_text("".join(json.dumps({"ctx": f"Item {i}:", "endings": ["a", "bb", "c", "dd"], "label": i % 4})
                            + "\n" for i in range(3)))
    return path


def test_hellaswag_alone_scores_only_the_file_and_beside_a_probe_both(tmp_path, capsys, monkeypatch):
    save_tiny_run(tmp_path / "run")

    def whole_report(*args, **kwargs):
        raise AssertionError("the whole evaluation ran")

    monkeypatch.setattr(eval_cli, "evaluate", whole_report)
    items, out = _items(tmp_path / "mc.jsonl"), tmp_path / "eval.json"
    flags = [str(tmp_path / "run"), "--hellaswag", str(items), "--device", "cpu", "--out", str(out)]
    assert eval_main(flags) == 0
    report = json.loads(out.read_text())
    assert report["multiple_choice"]["items"] == 3 and "synthetic" not in report
    printed = capsys.readouterr().out
    assert "multiple choice" in printed and "synthetic" not in printed
    probe = tmp_path / "probe.jsonl"
    probe.write_text(json.dumps({"prompt": "1+1=", "answer": "2", "trained": True}) + "\n")
    assert eval_main([*flags, "--probe", str(probe)]) == 0
    report = json.loads(out.read_text())
    assert report["probe"]["rows"] and report["multiple_choice"]["items"] == 3
    assert "multiple choice" in capsys.readouterr().out


def test_length_gen_alone_runs_only_the_study(tmp_path, monkeypatch):
    save_tiny_run(tmp_path / "run")
    monkeypatch.setattr(eval_cli, "report_main", lambda *args: pytest.fail("the evaluation report ran"))
    assert eval_main([str(tmp_path / "run"), "--length-gen", "--window", "8", "--chunk", "4", "--stride", "4",
                      "--multiples", "1,2", "--sequences", "1", "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "length-gen" / "length_gen.json").is_file()
    assert not list(tmp_path.rglob("eval.json"))
