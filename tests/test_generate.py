"""Generation: the double-shift guard, KV cache exactness, sampling filters, stop strings, batching, streaming."""
import pytest
import torch

from hamner import HamnerConfig, HamnerModel
from hamner.errors import InferenceError
from hamner.kernels import dispatch
from hamner.model.decoding_cache import DecodingCache
from hamner.use.generate import (
    Sampling,
    filter_top_k,
    filter_top_p,
    generate,
    next_tokens,
    penalize_repetition,
    stream,
)

# Tiny models run much faster on one thread than on two contended ones.
pytestmark = pytest.mark.usefixtures("single_thread")


EOS = 256
TEXT = "héllo wörld<|user|>bye"  # two 2-byte characters: a byte-level model emits each in two steps
SEQUENCE = list(TEXT.encode()) + [EOS]


def decode(ids: list[int]) -> str:
    return bytes(t for t in ids if t < 256).decode("utf-8", errors="replace")


def random_model(max_seq_len: int = 64, seed: int = 0) -> HamnerModel:
    """Untrained float64 model with a wide init: peaked, varied greedy choices and no float ties."""
    torch.manual_seed(seed)
    config = HamnerConfig(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                          intermediate_size=96, max_seq_len=max_seq_len, init_std=0.3)
    return HamnerModel(config).double()


@pytest.fixture(scope="module")
def memorised(single_thread) -> HamnerModel:
    """A tiny byte-level model trained to reproduce SEQUENCE (windows idx = w[:-1], targets = w[1:])."""
    torch.manual_seed(0)
    model = HamnerModel(HamnerConfig(vocab_size=257, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                     intermediate_size=128, max_seq_len=32))
    window = torch.tensor([SEQUENCE])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with dispatch.cpu_kernels(False):  # module fixtures run outside the per-test reference-ops switch
        for _ in range(150):
            loss = model(window[:, :-1], window[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert loss.item() < 0.05
    return model


@pytest.mark.parametrize("use_cache", [True, False])
def test_memorised_sequence_is_generated_exactly_from_its_first_token(memorised, use_cache):
    # The double-shift guard: a model trained to predict two tokens ahead would skip every other token.
    out = generate(memorised, SEQUENCE[:1], len(SEQUENCE) - 1, temperature=0, use_cache=use_cache)
    assert out == [SEQUENCE[1:]]


def test_generation_stops_at_eos_without_returning_it(memorised):
    out = generate(memorised, SEQUENCE[:1], 100, temperature=0, eos_id=EOS)
    assert out == [SEQUENCE[1:-1]]


def test_stop_string_ends_generation_and_is_stripped(memorised):
    out = generate(memorised, SEQUENCE[:1], 100, temperature=0, stop_strings=("<|user|>",), decode=decode)
    assert decode(out[0]) == "éllo wörld"
    # A bare string is one stop string; the text from where it starts on is dropped.
    out = generate(memorised, SEQUENCE[:1], 100, temperature=0, stop_strings="rld<", decode=decode)
    assert decode(out[0]) == "éllo wö"


def test_stream_yields_whole_characters_as_they_come_and_never_a_stop_string_prefix(memorised):
    pieces = list(stream(memorised, SEQUENCE[:1], 100, temperature=0, stop_strings=("<|user|>", "<|system|>"),
                         decode=decode))
    assert "".join(pieces) == "éllo wörld"
    assert pieces == list("éllo wörld")  # one piece per character: half a UTF-8 character is held back
    assert not any("<" in piece for piece in pieces)
    free = list(stream(memorised, SEQUENCE[:1], len(SEQUENCE) - 1, temperature=0, decode=decode))
    assert "".join(free) == TEXT[1:]


def test_stream_pieces_join_to_what_generate_returns_when_sampling():
    model = random_model()
    kwargs = dict(temperature=1.0, top_k=20, seed=15, stop_strings=("=H", "A"), decode=decode)
    pieces = list(stream(model, [40, 50], 40, **kwargs))
    text = decode(generate(model, [40, 50], 40, **kwargs)[0])
    assert len(pieces) > 1 and len(text) < 40  # this seed meets a stop string
    assert "".join(pieces) == text


def test_kv_cache_greedy_equals_uncached_greedy_including_past_the_context_window():
    model = random_model(max_seq_len=16)
    prompt = [5, 17, 3, 60, 2]
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    uncached = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert cached == uncached and len(cached[0]) == 30
    long_prompt = list(range(1, 25))  # longer than the window: cropped, not an error
    assert generate(model, long_prompt, 5, temperature=0) == generate(model, long_prompt, 5, temperature=0,
                                                                      use_cache=False)


def test_cached_logits_use_rope_rows_offset_by_the_cache_position():
    model = random_model()
    idx = torch.randint(0, 97, (2, 14))
    full = model(idx)
    cache = DecodingCache(model, batch_size=2)
    assert cache.states[0].k.shape == (2, 64, 2, 16) and cache.states[0].k.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(model(idx[:, :7], cache=cache), full[:, :7])
        for t in range(7, 10):  # one token at a time
            torch.testing.assert_close(model(idx[:, t:t + 1], cache=cache)[:, -1], full[:, t])
        torch.testing.assert_close(model(idx[:, 10:], cache=cache), full[:, 10:])  # a chunk after a prefix
    assert cache.pos == 14
    cache.reset()
    assert cache.pos == 0


def test_cache_overflow_is_a_clear_error():
    model = random_model(max_seq_len=8)
    cache = DecodingCache(model, batch_size=1)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exceeds max_seq_len 8"):
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_of_different_lengths_equals_one_at_a_time(use_cache):
    model = random_model()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11], [12] * 8, [13]]
    singles = [generate(model, p, 12, temperature=0, use_cache=use_cache)[0] for p in prompts]
    # An end-of-text id that one row meets early, so rows of a batch finish at different steps.
    eos = singles[0][4]
    stopped = [s[:s.index(eos)] if eos in s else s for s in singles]
    assert any(len(s) < 12 for s in stopped) and any(len(s) == 12 for s in stopped)
    assert generate(model, prompts, 12, temperature=0, use_cache=use_cache) == singles
    assert generate(model, prompts, 12, temperature=0, eos_id=eos, use_cache=use_cache) == stopped


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize_repetition(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_repetition_penalty_changes_greedy_choices():
    model = random_model()
    plain = generate(model, [3, 3, 3], 20, temperature=0)[0]
    penalised = generate(model, [3, 3, 3], 20, temperature=0, repetition_penalty=100.0)[0]
    assert len(set(penalised)) == 20 and penalised != plain and 3 not in penalised


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_top_k(logits, 10)).all()
    assert torch.isfinite(filter_top_p(logits, 0.75)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_top_p(logits, 0.85)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(filter_top_p(logits, 0.01)).tolist() == [[False, True, False, False]]
    generator = torch.Generator().manual_seed(0)
    batch = logits.expand(2000, 4)
    seen = torch.zeros_like(batch, dtype=torch.bool)
    assert set(next_tokens(batch, seen, Sampling(top_k=2), generator).tolist()) == {1, 3}
    assert set(next_tokens(batch, seen, Sampling(top_p=0.85), generator).tolist()) == {1, 2, 3}
    assert set(next_tokens(batch, seen, Sampling(), generator).tolist()) == {0, 1, 2, 3}


def test_sampling_is_reproducible_by_seed_and_top_k_1_is_greedy():
    model = random_model()
    first = generate(model, [[1, 2], [3, 4]], 15, temperature=1.5, seed=7)
    assert first == generate(model, [[1, 2], [3, 4]], 15, temperature=1.5, seed=7)
    assert first != generate(model, [[1, 2], [3, 4]], 15, temperature=1.5, seed=8)
    greedy = generate(model, [1, 2], 15, temperature=0)
    assert generate(model, [1, 2], 15, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate(model, [1, 2], 0) == [[]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_ids=[]), "no prompt given"),
    (dict(prompt_ids=[[1], []]), "prompt is empty"),
    (dict(prompt_ids=[1, 97]), "outside the vocabulary"),
    (dict(stop_strings=("x",)), "need a decode function"),
    (dict(stop_strings=("",), decode=decode), "must not contain an empty string"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    arguments = dict(prompt_ids=[1, 2], max_new_tokens=3) | kwargs
    with pytest.raises(InferenceError, match=message):
        generate(random_model(), arguments.pop("prompt_ids"), arguments.pop("max_new_tokens"), **arguments)
