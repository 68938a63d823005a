"""Tokenizers: the byte tokenizer, a real tokenizer.json (cosmo2), hub names from the local cache, then the hub
(downloads are simulated: no test touches the network)."""
import shutil

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import pytest

from hamner.data import DataError, Tokenizer, load_tokenizer

TEXT = "Once upon a time, Lily saw 23 ducks. Ça va? 🦆\n\tThe end."


def test_bytes_tokenizer_roundtrip_and_eos():
    tok = load_tokenizer("bytes")
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("bytes", 257, 256)
    ids = tok.encode("hé<|endoftext|>x")
    assert ids == [104, 0xC3, 0xA9, 256, 120]
    assert tok.decode(ids) == "hé<|endoftext|>x"
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode_batch([TEXT, "", "ab"]) == [tok.encode(TEXT), [], [97, 98]]


def test_bytes_tokenizer_decodes_ids_it_lacks_as_replacement_characters():
    tok = load_tokenizer("bytes")
    assert tok.decode([104, 300, 105, -1, 256, 0xC3, 257, 0xA9]) == "h\ufffdi\ufffd<|endoftext|>\ufffd\ufffd\ufffd"
    assert tok.decode([0xC3, 0xA9, 65_535]) == "é\ufffd"


def test_cosmo2_file(shared_data):
    path = str(shared_data / "cosmo2_tokenizer.json")
    tok = load_tokenizer(path)
    assert (tok.name, tok.vocab_size, tok.eos_id) == (path, 49_152, 0)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert 0 not in ids  # no special tokens inserted
    assert tok.encode("a<|endoftext|>b") == tok.encode("a") + [0] + tok.encode("b")
    texts = [TEXT, "hello world", "", "<|endoftext|>"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode(tok.encode_batch(texts)[3]) == "<|endoftext|>"
    assert tok.decode([*ids, 60_000]) == TEXT  # an id the vocabulary lacks is skipped


def test_fingerprint_is_the_vocabulary_identity(shared_data, tmp_path):
    path = shared_data / "cosmo2_tokenizer.json"
    copy = tmp_path / "renamed.json"
    shutil.copy(path, copy)
    a, b = load_tokenizer(str(path)), load_tokenizer(str(copy))
    assert a.fingerprint == b.fingerprint  # same vocabulary under another name
    assert a.fingerprint != load_tokenizer("bytes").fingerprint
    assert load_tokenizer("bytes").fingerprint == load_tokenizer("bytes").fingerprint
    shutil.copy(path, tmp_path / "tokenizer.json")  # a folder holding tokenizer.json works too
    assert load_tokenizer(str(tmp_path)).fingerprint == a.fingerprint


def _word_level(tmp_path, n_words, with_eos=True):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(n_words)}
    if with_eos:
        vocab["<|endoftext|>"] = n_words
    backend = Backend(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / f"wl{n_words}{with_eos}.json"
    backend.save(str(path))
    return str(path)


def test_refuses_vocab_over_uint16_and_missing_eos(tmp_path):
    with pytest.raises(DataError, match="65,536"):
        load_tokenizer(_word_level(tmp_path, 65_536))  # 65,537 tokens with <|endoftext|>
    with pytest.raises(DataError, match="no <\\|endoftext\\|>"):
        load_tokenizer(_word_level(tmp_path, 10, with_eos=False))
    small = load_tokenizer(_word_level(tmp_path, 10))
    assert (small.vocab_size, small.eos_id) == (11, 10)
    assert small.fingerprint != load_tokenizer(_word_level(tmp_path, 11)).fingerprint


def no_download(*args, **kwargs):
    raise AssertionError("a test must not download")


def test_missing_file_and_uncached_hub_name_offline(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(str(tmp_path / "nope.json"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(DataError, match="'HuggingFaceTB/cosmo2-tokenizer' is not in the local Hugging Face cache "
                                        "and could not be downloaded") as err:
        load_tokenizer("HuggingFaceTB/cosmo2-tokenizer")
    assert "\n" not in str(err.value) and "tokenizer.json" in str(err.value)


def test_uncached_hub_name_is_downloaded(shared_data, tmp_path, monkeypatch):
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        target = tmp_path / "downloaded" / filename
        target.parent.mkdir(exist_ok=True)
        shutil.copy(shared_data / "cosmo2_tokenizer.json", target)
        return str(target)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    tok = load_tokenizer("HuggingFaceTB/cosmo2-tokenizer")
    assert calls == [("HuggingFaceTB/cosmo2-tokenizer", "tokenizer.json")]
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("HuggingFaceTB/cosmo2-tokenizer", 49_152, 0)


@pytest.mark.parametrize("error", [OSError("Network is unreachable"), huggingface_hub.errors.EntryNotFoundError("404")])
def test_failed_download_is_one_line(tmp_path, monkeypatch, error):
    def download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(DataError, match=f"'someone/tok' .* could not be downloaded \\({error}\\)") as err:
        load_tokenizer("someone/tok")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="neither a tokenizer.json path nor a hub repository name"):
        load_tokenizer("not a//repo name")


def test_hub_name_resolves_through_local_cache(shared_data, tmp_path, monkeypatch):
    snapshot = tmp_path / "models--HuggingFaceTB--cosmo2-tokenizer" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    shutil.copy(shared_data / "cosmo2_tokenizer.json", snapshot / "tokenizer.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)  # the cache comes first
    tok = load_tokenizer("HuggingFaceTB/cosmo2-tokenizer")
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("HuggingFaceTB/cosmo2-tokenizer", 49_152, 0)
    assert tok.fingerprint == load_tokenizer(str(shared_data / "cosmo2_tokenizer.json")).fingerprint


def _cache_hub_file(cache, repo_id, source):
    """Put `source` in a Hugging Face cache at `cache` as repo_id's tokenizer.json (what a download leaves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    shutil.copy(source, snapshot / "tokenizer.json")


@pytest.mark.parametrize("repo_id", ["openai-community/gpt2", "gpt2"])
def test_gpt2_resolves_to_gpt2s_hub_tokenizer_under_either_name(tmp_path, monkeypatch, repo_id):
    source = _word_level(tmp_path, 12)  # a small stand-in: tests download nothing
    _cache_hub_file(tmp_path / "cache", repo_id, source)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    tok = load_tokenizer("gpt2")
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("gpt2", 13, 12)
    assert tok.fingerprint == load_tokenizer(source).fingerprint


def test_an_uncached_gpt2_is_one_line_naming_both_repositories(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(DataError, match="tokenizer 'openai-community/gpt2' or 'gpt2' is not in the local Hugging "
                                        "Face cache and could not be downloaded") as err:
        load_tokenizer("gpt2")
    assert "\n" not in str(err.value)
