"""Supervised fine-tuning: loss masks from chat data, assistant-only loss, document packing, probes."""
import json
import random

import numpy as np
import pytest
import torch
from train_helpers import metrics, tiny_settings

from hamner.data.chat_format import MARKERS, format_conversation
from hamner.data.chat_gen import ChatSource
from hamner.data.concepts import KINDS, concept_items
from hamner.data.loss_masks import IGNORE_INDEX, targets_from_mask
from hamner.data.mixture import Mixture, MixtureSampler, open_sources
from hamner.data.prepare import prepare
from hamner.data.shards import mask_path, read_mask, read_shard, shard_paths, write_mask
from hamner.data.text_sources import ReadOptions
from hamner.data.tokenizer import load_tokenizer
from hamner.errors import CurriculumError, DataError, TrainError
from hamner.eval.probe import load_probe, score_probe
from hamner.kernels import attention_dispatch, reference
from hamner.model.config import model_config
from hamner.model.packing import document_ids, document_positions
from hamner.model.transformer import HamnerModel
from hamner.train.curriculum.spec import load_curriculum
from hamner.train.settings import resume_settings
from hamner.train.trainer import train
from hamner.use.load import load_model

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo wörld, 12+30?"},
     {"role": "assistant", "content": "42, naïvely."}, {"role": "user", "content": "And 7?"},
     {"role": "assistant", "content": "Seven."}],
    [{"role": "user", "content": "Say ok."}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "Thanks!"}],
]


def expected_counted(messages: list[dict], eot: str) -> str:
    """What a mask should count: each reply, its newline and the next turn's marker (end-of-text after a last reply)."""
    out = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            following = messages[i + 1]["role"] if i + 1 < len(messages) else None
            out += m["content"] + "\n" + (MARKERS[following] if following else eot)
    return out


def _write_inputs(directory, form: str):
    """One input form of CONVERSATIONS: messages in JSONL or Parquet, chat-format text in .txt or JSONL."""
    texts = [format_conversation(c) for c in CONVERSATIONS]
    if form == "messages.jsonl":
        lines = [json.dumps({"messages": c}) for c in CONVERSATIONS]
    elif form == "text.jsonl":
        lines = [json.dumps({"text": t}) for t in texts]
    elif form == "text.txt":
        (directory / "in.txt").write_text("<|endoftext|>".join(texts), encoding="utf-8")
        return directory / "in.txt"
    else:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"messages": CONVERSATIONS}), directory / "in.parquet")
        return directory / "in.parquet"
    path = directory / f"in.{form.split('.')[-1]}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("form", ["messages.jsonl", "text.jsonl", "text.txt", "messages.parquet"])
@pytest.mark.parametrize("spec", ["bytes", "cosmo2"])
def test_masks_line_up_with_tokens(tmp_path, shared_data, spec, form):
    tokenizer = load_tokenizer(str(shared_data / "cosmo2_tokenizer.json") if spec == "cosmo2" else "bytes")
    prepare([str(_write_inputs(tmp_path, form))], tmp_path / "out", tokenizer, ReadOptions(), val_fraction=0.0,
            progress=False)
    shard = shard_paths(tmp_path / "out", "train")[0]
    tokens = np.asarray(read_shard(shard))
    mask = np.asarray(read_mask(shard, tokens.size))
    ends = np.flatnonzero(tokens == tokenizer.eos_id) + 1
    assert len(ends) == len(CONVERSATIONS)
    for messages, doc, doc_mask in zip(CONVERSATIONS, np.split(tokens, ends[:-1]), np.split(mask, ends[:-1])):
        counted = tokenizer.decode(doc[doc_mask == 1].tolist())
        assert counted == expected_counted(messages, "<|endoftext|>")
        assert tokenizer.decode(doc[doc_mask == 0].tolist()).startswith(format_conversation(messages)[:8])


def test_mask_sidecar_is_validated_and_optional(tmp_path):
    tokenizer = load_tokenizer("bytes")
    (tmp_path / "plain.txt").write_text("just text<|endoftext|>more text")
    prepare([str(tmp_path / "plain.txt")], tmp_path / "plain", tokenizer, ReadOptions(), val_fraction=0.0,
            progress=False)
    shard = shard_paths(tmp_path / "plain", "train")[0]
    assert not mask_path(shard).exists()  # every token counts: no sidecar
    sampler = MixtureSampler(open_sources(["plain"], str(tmp_path), tokenizer), seed=1, assistant_only=["plain"])
    rows, masks = sampler.labeled_rows(0, Mixture({"plain": 1.0}), 2, 8)
    assert masks.shape == rows.shape and masks.all()
    write_mask(shard, np.ones(3, dtype=np.uint8))
    with pytest.raises(DataError, match="holds 3 mask entries but its shard holds"):
        read_mask(shard, read_shard(shard).size)
    mask_path(shard).write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="not a loss mask"):
        read_mask(shard, read_shard(shard).size)


def test_windows_read_masks_across_shards(tmp_path):
    tokenizer = load_tokenizer("bytes")
    path = _write_inputs(tmp_path, "messages.jsonl")
    prepare([str(path)] * 3, tmp_path / "chats", tokenizer, ReadOptions(), val_fraction=0.0, shard_tokens=40,
            progress=False)
    shards = shard_paths(tmp_path / "chats", "train")
    assert len(shards) > 3
    tokens = np.concatenate([np.asarray(read_shard(p)) for p in shards])
    masks = np.concatenate([np.ones(t.size, np.uint8) if m is None else m for p in shards
                            for t in [read_shard(p)] for m in [read_mask(p, t.size)]])
    source = open_sources(["chats"], str(tmp_path), tokenizer)["chats"]
    rows, row_masks = source.masked_windows(np.arange(3), 70, seed=5)
    for row, row_mask in zip(rows, row_masks):
        start = next(i for i in range(tokens.size - 69) if np.array_equal(tokens[i:i + 70], row))
        assert np.array_equal(masks[start:start + 70], row_mask)


def test_targets_ignore_masked_positions_and_sources_without_masks_are_refused():
    rows = np.array([[1, 2, 3, 4]])
    assert targets_from_mask(rows, np.array([[1, 0, 1, 0]])).tolist() == [[IGNORE_INDEX, 3, IGNORE_INDEX]]
    tokenizer = load_tokenizer("bytes")
    with pytest.raises(DataError, match="'synthetic' has no loss masks"):
        MixtureSampler(open_sources(["synthetic"], None, tokenizer), seed=0, assistant_only=["synthetic"])
    chat = ChatSource(tokenizer)
    tokens, masks = chat.masked_rows(2, 300, seed=3)
    assert np.array_equal(tokens, chat.rows(2, 300, seed=3))
    text = tokenizer.decode(tokens[0][masks[0] == 1].tolist())
    assert "<|assistant|>" not in text and 0 < masks.mean() < 1


def test_curriculum_source_tables_are_checked(tmp_path):
    def load(extra: str):
        path = tmp_path / "c.toml"
        path.write_text(f'{extra}\n[[stages]]\nname = "a"\nsteps = 1\nweights = {{ chat = 1 }}\nlr = 1e-3\n')
        return load_curriculum(path)

    c = load('packing = "document"\nprobe = "concepts"\n[sources.chat]\nloss = "assistant"')
    assert (c.assistant_only_sources(), c.packing, c.probe) == (["chat"], "document", "concepts")
    assert load("").source_loss == {} and load("").packing == "stream"
    with pytest.raises(CurriculumError, match=r"c.toml: sources.chat.loss: must be one of all, assistant"):
        load('[sources.chat]\nloss = "user"')
    with pytest.raises(CurriculumError, match=r"sources.stories: no stage uses source 'stories'"):
        load('[sources.stories]\nloss = "all"')
    with pytest.raises(CurriculumError, match=r"sources.chat: unknown key 'mask'"):
        load('[sources.chat]\nmask = 1')
    with pytest.raises(CurriculumError, match=r"c.toml.packing: must be one of stream, document"):
        load('packing = "rows"')


def test_document_masking_equals_each_document_alone():
    torch.manual_seed(0)
    model = HamnerModel(model_config("demo")).eval()
    eos = 256
    docs = [torch.cat([torch.randint(0, 256, (n,)), torch.tensor([eos])]) for n in (6, 11, 4)]
    row = torch.cat(docs)[None]
    segments = document_ids(row, eos)
    assert document_positions(segments)[0].tolist() == [*range(7), *range(12), *range(5)]
    with torch.no_grad():
        packed = model(row, segment_ids=segments)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        plain = model(row)[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain[7:], alone[7:], atol=1e-3)  # without the mask, later documents differ


def test_document_mask_backends_agree():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 24, 4, 8), torch.randn(2, 24, 2, 8), torch.randn(2, 24, 2, 8)
    segments = document_ids(torch.randint(0, 4, (2, 24)), 0)
    expected = reference.attention(q.double(), k.double(), v.double(), True, segment_ids=segments).float()
    out = attention_dispatch.attention(q, k, v, True, segment_ids=segments)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.warns(UserWarning):  # FlexAttention runs eagerly (unfused) off CUDA
        flex = attention_dispatch._flex(q, k, v, True, segments)
    torch.testing.assert_close(flex, expected, atol=1e-5, rtol=1e-5)


# ----- training runs -----

SFT_CURRICULUM = """\
name = "test-sft"
tokenizer = "bytes"
eval_interval = 1000
packing = "{packing}"

[sources.convos]
loss = "{loss}"

[[stages]]
name = "sft"
steps = {steps}
weights = {{ convos = 1.0 }}
lr = 3e-3
warmup_steps = 5
schedule = "cosine"
"""


@pytest.fixture(scope="module")
def convo_data(tmp_path_factory):
    """Conversations whose user turns are random bytes and whose reply is always one word."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    with open(root / "convos.jsonl", "w") as f:
        for _ in range(300):
            noise = "".join(chr(rng.randrange(33, 127)) for _ in range(rng.randrange(20, 40)))
            f.write(json.dumps({"messages": [{"role": "user", "content": noise},
                                             {"role": "assistant", "content": "banana"}]}) + "\n")
    prepare([str(root / "convos.jsonl")], root / "data" / "convos", load_tokenizer("bytes"), ReadOptions(),
            val_fraction=0.05, progress=False)
    return root


def _sft_run(root, tmp_path, name, loss, steps, packing="stream", **overrides):
    curriculum = tmp_path / f"{name}.toml"
    curriculum.write_text(SFT_CURRICULUM.format(loss=loss, steps=steps, packing=packing))
    settings = dict(data=str(root / "data"), batch_size=4, seq_len=128, log_interval=10) | overrides
    return tiny_settings(tmp_path / name, curriculum, **settings)


def test_assistant_loss_learns_the_reply_and_all_tokens_cannot(convo_data, tmp_path, single_thread):
    assistant = train(_sft_run(convo_data, tmp_path, "assistant", "assistant", 80, packing="document"))
    everything = train(_sft_run(convo_data, tmp_path, "all", "all", 40))
    assert assistant.losses[-1] < 0.1, assistant.losses
    # Random bytes stay unpredictable: about 2.2 nats per token is the floor of this data.
    assert everything.losses[-1] > 2.0, everything.losses


def test_resume_is_exact_with_masks(convo_data, tmp_path, single_thread):
    whole = _sft_run(convo_data, tmp_path, "whole", "assistant", 8, packing="document", log_interval=1,
                     batch_size=2, seq_len=32)
    train(whole)
    parts = _sft_run(convo_data, tmp_path, "parts", "assistant", 8, packing="document", log_interval=1,
                     batch_size=2, seq_len=32, max_steps=3)
    train(parts)
    train(resume_settings(tmp_path / "parts", {"max_steps": 8}))
    assert [r["loss"] for r in metrics(tmp_path / "parts")] == [r["loss"] for r in metrics(tmp_path / "whole")]
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_concept_items_are_disjoint_and_cover_seven_kinds():
    assert len(KINDS) == 7
    for kind in KINDS:
        items = concept_items(kind)
        trained = {i.question for i in items if i.trained}
        held = {i.question for i in items if not i.trained}
        assert trained and held and not trained & held


def test_probe_of_a_fine_tuned_model_scores_trained_items_and_reports_held_out_apart(tmp_path, single_thread):
    items = [("What is the capital of Zorbia?", "Plink.", True), ("Colour of a glorp?", "teal.", True),
             ("Name the moon of Vex.", "Ollo.", True), ("Who sings in Drum?", "the frogs.", True),
             ("What is the capital of Quent?", "Marrow.", False), ("Colour of a snib?", "mauve.", False)]
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"prompt": f"<|user|>\n{q}\n<|assistant|>\n", "answer": a, "trained": t,
                                         "kind": "facts"}) + "\n" for q, a, t in items))
    # Many shuffled copies, so the fixed windows of the shard stream cut each conversation in many places.
    trained = [(q, a) for q, a, t in items if t] * 25
    random.Random(0).shuffle(trained)
    with open(tmp_path / "train.jsonl", "w") as f:
        for q, a in trained:
            turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": turns}) + "\n")
    prepare([str(tmp_path / "train.jsonl")], tmp_path / "data" / "facts", load_tokenizer("bytes"), ReadOptions(),
            val_fraction=0.0, progress=False)
    curriculum = tmp_path / "facts.toml"
    curriculum.write_text(f'name = "facts"\ntokenizer = "bytes"\nprobe = "{probe}"\n[sources.facts]\n'
                          'loss = "assistant"\n[[stages]]\nname = "memorise"\nsteps = 200\n'
                          'weights = { facts = 1.0 }\nlr = 5e-3\nwarmup_steps = 5\n')
    result = train(tiny_settings(tmp_path / "run", curriculum, data=str(tmp_path / "data"), batch_size=4,
                                 seq_len=128, log_interval=50))
    model, _ = load_model(result.run_dir)
    scored = score_probe(model.eval(), load_tokenizer("bytes"), load_probe(str(probe)))
    rows = {(r["kind"], r["split"]): r for r in scored}
    assert rows["facts", "trained"]["accuracy"] == 1.0 and rows["facts", "trained"]["total"] == 4
    assert rows["all", "held_out"]["total"] == 2
    logged = (result.run_dir / "probe.csv").read_text().splitlines()
    assert logged[0] == "step,stage,kind,split,correct,total,accuracy"
    assert "200,memorise,facts,trained,4,4,1" in logged


def test_probe_files_are_checked(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match="line 1: field 'trained' must be true/false"):
        load_probe(str(bad))
    with pytest.raises(DataError, match="neither a file nor a built-in probe"):
        load_probe(str(tmp_path / "missing.jsonl"))
    assert {i.kind for i in load_probe("concepts")} == set(KINDS)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"prompt": p, "answer": "x", "trained": t}) + "\n"
                             for p, t in (("a", True), ("b", True), ("c", False))))
    rows = score_probe(HamnerModel(model_config("demo")).eval(), load_tokenizer("bytes"), load_probe(str(plain)))
    assert [(r["kind"], r["split"], r["total"]) for r in rows] == [("all", "trained", 2), ("all", "held_out", 1)]


def test_fine_tuning_starts_from_a_hugging_face_directory(convo_data, tmp_path, single_thread):
    from hamner.use.hf import export_hf

    export_hf(HamnerModel(model_config("demo")), model_config("demo"), tmp_path / "hf", eos_id=256)
    curriculum = tmp_path / "warm.toml"
    sft = SFT_CURRICULUM.format(loss="assistant", steps=2, packing="document")
    curriculum.write_text("requires_init = true\n" + sft)
    settings = dict(data=str(convo_data / "data"), batch_size=2, seq_len=32, max_steps=1)
    with pytest.raises(TrainError, match="give --init-from"):
        train(tiny_settings(tmp_path / "cold", curriculum, **settings))
    result = train(tiny_settings(tmp_path / "warm", curriculum, init_from=str(tmp_path / "hf"), **settings))
    assert result.step == 1
    assert f"initialised from {tmp_path / 'hf'}" in (result.run_dir / "train.log").read_text()


def test_validation_leaves_out_a_batch_that_counts_no_target():
    """A validation batch of chats without a reply counts no target: the mean is over the batches that count."""
    from types import SimpleNamespace

    from hamner.model.config import HamnerConfig
    from hamner.model.transformer import HamnerModel
    from hamner.train.distributed import DistInfo
    from hamner.train.evaluation import TrainEvaluator

    torch.manual_seed(0)
    model = HamnerModel(HamnerConfig(vocab_size=97, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                     intermediate_size=48, max_seq_len=16))
    rows = np.random.default_rng(0).integers(0, 97, (4, 9))
    masks = np.zeros((4, 9), dtype=np.uint8)
    masks[:2] = 1  # the first batch counts every target, the second none
    source = SimpleNamespace(masked_rows=lambda *shape: (rows, masks))
    evaluator = TrainEvaluator(model, None, SimpleNamespace(bits_per_byte=False, stages=(),
                                                            assistant_only_sources=lambda: ["chat"]),
                               {"chat": source}, SimpleNamespace(batch_size=2, eval_batches=2, seq_len=8),
                               torch.float32, DistInfo(), torch.device("cpu"))
    with torch.no_grad():
        first = float(model.eval()(torch.from_numpy(rows[:2, :-1]), torch.from_numpy(rows[:2, 1:])))
    assert evaluator.validate().loss == pytest.approx(first)
