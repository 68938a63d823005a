"""The concept experiments: echo, composition and capacity kinds, their probes, curricula and the capacity study."""
import json

import pytest
from train_helpers import tiny_settings

from hamner.commands import study as study_command
from hamner.data import concepts
from hamner.data.concepts import (
    KINDS,
    ConceptSource,
    concept_items,
    parse_source_name,
    probe_prompt,
    taught_items,
    training_text,
)
from hamner.data.loss_masks import tokens_and_masks
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import DataError
from hamner.eval import probe as probe_module
from hamner.eval.probe import load_probe, score_probe
from hamner.model.config import model_config
from hamner.model.transformer import HamnerModel
from hamner.tournament.study import STUDIES_DIR, StudyError, load_study
from hamner.train.curriculum.spec import CURRICULA_DIR
from hamner.train.trainer import train


def test_experiment_kinds_stay_out_of_the_concepts_set_and_echo_holds_out_unseen_numbers():
    assert {i.kind for i in concept_items()} == set(KINDS)
    echo = concept_items("echo")
    trained = {i.question for i in echo if i.trained}
    held = {i.question for i in echo if not i.trained}
    assert (len(trained), len(held)) == (150, 50) and not trained & held
    assert all(i.answer == i.question.removeprefix("Say ") for i in echo)
    assert echo[0] == concepts.ConceptItem("echo", "Say 35.", "35.", True)  # the fixed seed's first number
    concept_items.cache_clear()
    assert concept_items("echo") == echo


def test_capacity_facts_are_unique_nested_and_bounded():
    big = concept_items("capacity-256")
    assert len({i.question for i in big}) == 256 and all(i.trained for i in big)
    assert all(len(i.answer) == 4 and i.answer[:3].isdigit() for i in big)
    assert [i[1:] for i in concept_items("capacity-64")] == [i[1:] for i in big[:64]]
    assert {i.kind for i in concept_items("capacity-8")} == {"capacity-8"}
    for bad in ("capacity-0", "capacity-1025"):
        with pytest.raises(DataError, match="the number of facts must be 1 to 1024"):
            concept_items(bad)
    with pytest.raises(DataError, match="source 'concepts/capacity-x': unknown concept kind 'capacity-x'"):
        parse_source_name("concepts/capacity-x")


def test_composition_teaches_statements_and_other_questions_never_the_composed_questions():
    items = concept_items("composition")
    taught = {training_text(i) for i in taught_items("composition")}
    assert not any("What is the opposite of" in text for text in taught)
    composed = [i for i in items if i.kind == "composition"]
    assert len(composed) == 62 and all(i.chat for i in composed)
    for item in composed:
        word = item.question.removeprefix("What is the opposite of ").removesuffix("?")
        statement = f"The opposite of {word} is {item.answer}"
        assert (statement in taught) == item.trained  # a held-out pair is never seen at all
    questions = [i for i in items if i.kind == "composition/questions"]
    statements = {i.question for i in items if i.kind == "composition/statements"}
    for item in questions:  # a held-out question's fact is taught as a statement only
        asked = item.question.removeprefix("What is the ").removesuffix("?")
        assert f"The {asked} is" in statements
        assert (training_text(item) in taught) == item.trained
    assert any(not i.trained for i in questions)
    for item in items:  # the probe gives what precedes the answer in the taught text, chat or plain
        assert training_text(item).startswith(probe_prompt(item).removesuffix("\n"))
        assert item.chat == (item.kind != "composition/statements")


def test_concept_sources_are_seeded_and_statements_count_every_token():
    tokenizer = load_tokenizer("bytes")
    source = ConceptSource(tokenizer, "composition")
    texts = source.texts(40, seed=3)
    assert texts == source.texts(40, seed=3) and texts[10:] == source.texts(30, seed=3, start=10)
    assert texts != source.texts(40, seed=4)
    plain = next(t for t in texts if t.startswith("The "))
    chat = next(t for t in texts if t.startswith("<|user|>"))
    (_, plain_mask), (_, chat_mask) = tokens_and_masks(tokenizer, [plain, chat])
    assert plain_mask.all() and 0 < chat_mask.sum() < len(chat_mask)
    assert (source.rows(3, 64, seed=5) == ConceptSource(tokenizer, "composition").rows(3, 64, seed=5)).all()


@pytest.mark.parametrize("spec", ["concepts/echo", "concepts/composition", "concepts/capacity-64"])
def test_probe_scores_a_memorised_model_100_and_an_untrained_one_0(spec, monkeypatch, single_thread):
    tokenizer = load_tokenizer("bytes")
    items = load_probe(spec)
    untrained = score_probe(HamnerModel(model_config("demo")).eval(), tokenizer, items)
    assert all(row["correct"] == 0 for row in untrained)
    answers = {tuple(tokenizer.encode(i.prompt)): i.answer for i in items}

    def memorised(model, prompts, max_new_tokens, **kwargs):
        # What a model that learnt the training text writes: a statement's answer follows a space.
        outs = []
        for prompt in prompts:
            text = tokenizer.decode(prompt[1:])
            answer = answers[tuple(prompt[1:])]
            outs.append(tokenizer.encode(answer if text.endswith("\n") else " " + answer))
        return outs

    monkeypatch.setattr(probe_module, "generate", memorised)
    rows = score_probe(None, tokenizer, items)
    assert all(row["accuracy"] == 1.0 for row in rows)
    assert {r["kind"] for r in rows} == {i.kind for i in items} | {"all"}
    assert sum(r["total"] for r in rows if r["kind"] == "all") == len(items)


@pytest.mark.parametrize("name", ["concepts-echo", "concepts-composition", "concepts-capacity"])
def test_shipped_concept_curricula_train_and_probe(name, tmp_path, single_thread):
    text = (CURRICULA_DIR / f"{name}.toml").read_text()
    steps = next(line for line in text.splitlines() if line.startswith("steps = "))
    curriculum = tmp_path / f"{name}.toml"
    curriculum.write_text(text.replace(steps, "steps = 2"))
    result = train(tiny_settings(tmp_path / "run", curriculum))
    assert result.step == 2
    logged = (result.run_dir / "probe.csv").read_text().splitlines()
    kinds = {line.split(",")[2] for line in logged[1:]}
    expected = {i.kind for i in concept_items(name.removeprefix("concepts-").replace("capacity", "capacity-64"))}
    assert kinds == expected | {"all"}


CAPACITY = """\
name = "tiny-capacity"
tokenizer = "bytes"
probe = "concepts/capacity-4"
batch_size = 8
seq_len = 64
[sources."concepts/capacity-4"]
loss = "assistant"
[[stages]]
name = "memorise"
steps = {steps}
weights = {{ "concepts/capacity-4" = 1.0 }}
lr = 5e-3
warmup_steps = 10
"""
STUDY = """\
name = "tiny-capacity"
curriculum = "tiny-capacity.toml"
knee = 0.9
save_interval = 1000
keep_checkpoints = 1
device = "cpu"
threads = 1
eval_batches = 1
task_samples = 0
[[arms]]
name = "n2"
preset = "demo"
sources = {{ "concepts/capacity-4" = "concepts/capacity-2" }}
[[arms]]
name = "{second}"
preset = "demo"
sources = {{ "concepts/capacity-4" = "{source}" }}
"""


def test_capacity_study_trains_one_arm_per_n_and_finds_the_knee(tmp_path, capsys, single_thread):
    (tmp_path / "tiny-capacity.toml").write_text(CAPACITY.format(steps=150))
    (tmp_path / "tiny.toml").write_text(STUDY.format(second="n64", source="concepts/capacity-64"))
    out = tmp_path / "study"
    assert study_command.main([str(tmp_path / "tiny.toml"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| n2 | " in table and "| capacity-2 | 100 % (2/2) | - |" in table  # memorised
    assert "knee (every arm up to it recalls at least 90 % of its trained items): n2" in table
    report = json.loads((out / "report.json").read_text())
    assert report["knee"] == "n2" and [a["name"] for a in report["arms"]] == ["n2", "n64"]
    recalled = report["arms"][1]["probe"][0]
    assert (recalled["kind"], recalled["total"]) == ("capacity-64", 64) and recalled["accuracy"] < 0.9
    renamed = (out / "n2.curriculum.toml").read_text()
    assert '"concepts/capacity-2"' in renamed and '"concepts/capacity-4"' not in renamed
    assert study_command.main([str(tmp_path / "tiny.toml"), "--out", str(out)]) == 0  # finished arms are skipped
    assert "training arm" not in capsys.readouterr().out


def test_study_source_renames_and_knee_are_checked(tmp_path):
    (tmp_path / "tiny-capacity.toml").write_text(CAPACITY.format(steps=2))
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY.format(second="n3", source="concepts/capacity-3").replace(
        '"concepts/capacity-4" = "concepts/capacity-3"', '"chat" = "stories"'))
    with pytest.raises(StudyError, match=r"arms\[1\].sources.chat: not a source of the curriculum"):
        load_study(str(spec))
    spec.write_text(STUDY.format(second="n3", source="concepts/capacity-3").replace("knee = 0.9", "knee = 1.5"))
    with pytest.raises(StudyError, match="knee"):
        load_study(str(spec))
    shipped = load_study("concepts-capacity")
    assert (shipped.kind, shipped.knee) == ("probe", 0.9)
    assert [a.sources for a in shipped.arms][0] == {"concepts/capacity-64": "concepts/capacity-8"}
    length = tmp_path / "length.toml"
    length.write_text("knee = 0.5\n" + (STUDIES_DIR / "ttt-length-demo.toml").read_text())
    with pytest.raises(StudyError, match="length.toml.knee: only a probe study has a knee"):
        load_study(str(length))
