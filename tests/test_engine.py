"""The engine against transformers, against itself one-by-one, and its sampling rules."""

import threading

import pytest
import torch

from llmos.checkpoint import save_model_dir
from llmos.infer.engine import Decoder, Engine, SamplingConfig, sample_next
from llmos.infer.native import NativeDecoder, native_error
from llmos.model import KVCache, Transformer
from tests.test_model import tiny_config

GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def model():
    m = Transformer(tiny_config(vocab_size=400, max_position_embeddings=128))
    m.init_weights(seed=4)
    with torch.no_grad():  # sharper distributions than a fresh init: fewer near-ties
        m.lm_head.weight.mul_(20)
    return m.eval()


needs_native = pytest.mark.skipif(native_error() is not None, reason=f"{native_error()}")
DECODERS = [Decoder, pytest.param(NativeDecoder, marks=needs_native)]


@pytest.mark.parametrize("decoder", DECODERS)
def test_prepared_logits_match_transformers(model, tok, tmp_path, decoder):
    from transformers import AutoModelForCausalLM

    save_model_dir(model, tok, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 400, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(x).logits
        assert (decoder(model, "fp32")(x) - ref).abs().max() <= 1e-4
        for dtype, tol in (("bf16", 0.05), ("int8", 0.08)):
            got = decoder(model, dtype)(x).float()
            assert (got - ref).abs().max() / ref.abs().max() < tol, dtype


@needs_native
def test_native_decode_matches_transformers_step_by_step(model, tok, tmp_path):
    """Prefill, then one token at a time on the cache, in a left-padded batch: each step's
    logits against transformers run on the whole sequence so far."""
    from transformers import AutoModelForCausalLM

    save_model_dir(model, tok, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    native = NativeDecoder(model, "fp32")
    seqs = [[0, 5, 9, 31, 4], [0, 200, 3]]
    pad = torch.tensor([0, 2])
    x = torch.tensor([seqs[0], [0, 0, *seqs[1]]])
    cache = KVCache(model.cfg, 2, 20, torch.float32)
    logits = native(x, cache=cache, pad=pad, last_only=True)[:, -1]
    for _ in range(6):
        for b, s in enumerate(seqs):
            with torch.no_grad():
                ref = hf(torch.tensor([s])).logits[0, -1]
            assert (logits[b] - ref).abs().max() <= 1e-4
        nxt = logits.argmax(-1)
        for b, s in enumerate(seqs):
            s.append(int(nxt[b]))
        logits = native(nxt.view(2, 1), cache=cache, pad=pad, last_only=True)[:, -1]


@needs_native
def test_native_engine_keeps_the_torch_engines_greedy_tokens(model, tok, monkeypatch):
    import llmos.infer.engine as engine_mod

    prompts = [[0, 5, 9], [0, *range(30, 47)], [0, 200]]
    native = Engine(model, tok, "fp32")
    assert isinstance(native.model, NativeDecoder)
    monkeypatch.setattr(engine_mod, "native_error", lambda: "off for this test")
    torch_engine = Engine(model, tok, "fp32")
    assert isinstance(torch_engine.model, Decoder)
    for e in (native, torch_engine):
        e.out = [c.ids for c in e.generate(prompts, GREEDY, n=2)]
    assert native.out == torch_engine.out
    tokens = torch.tensor([3, 7, 1])  # continuous batching: rows at their own positions
    caches = [KVCache(model.cfg, 4, 16, torch.float32) for _ in range(2)]
    for c in caches:
        for k in c.k + c.v:
            k.normal_(generator=torch.Generator().manual_seed(1))
    got = [
        e.model.decode_rows(tokens, torch.tensor([4, 0, 9]), c, [3, 0, 2])  # row 1 idle
        for e, c in zip((native, torch_engine), caches)
    ]
    assert (got[0] - got[1]).abs().max() <= 1e-4


def test_batched_equals_one_by_one(model, tok):
    engine = Engine(model, tok)
    prompts = [[0, 5, 9], [0, *range(30, 47)], [0, 200], [0, 7, 7, 7, 7, 7, 7, 7, 7]]
    alone = [engine.generate([p], GREEDY)[0] for p in prompts]
    together = engine.generate(prompts, GREEDY)
    for a, b in zip(alone, together):
        assert a.ids == b.ids and a.text == b.text
    assert all(len(c.ids) == 24 and c.finish_reason == "length" for c in together)


def test_per_sequence_stop_tokens(model, tok):
    engine = Engine(model, tok)
    prompts = [[0, 5, 9], [0, 200, 201]]
    free = engine.generate(prompts, GREEDY)
    stopped = engine.generate(prompts, GREEDY, stop_ids={free[0].ids[5]})  # emitted early
    k = free[0].ids.index(free[0].ids[5])
    assert stopped[0].ids == free[0].ids[: k + 1] and stopped[0].finish_reason == "stop"
    second = free[1].ids
    if free[0].ids[5] not in second:
        assert stopped[1].ids == second and stopped[1].finish_reason == "length"


def test_stop_strings_cut_the_text(model, tok):
    engine = Engine(model, tok)
    full = engine.generate([[0, 11, 12]], GREEDY)[0].text
    assert len(full) > 10
    stop = full[6:9]
    got = engine.generate(
        [[0, 11, 12]], SamplingConfig(temperature=0, max_new_tokens=24, stop=[stop])
    )
    assert got[0].text == full[: full.index(stop)] and got[0].finish_reason == "stop"


def test_streamed_pieces_join_to_the_text(model, tok):
    engine = Engine(model, tok)
    s = SamplingConfig(temperature=1.0, seed=3, max_new_tokens=30)
    pieces = "".join(p for _, _, p, _ in engine.stream([[0, 3]], s))
    assert pieces == engine.generate([[0, 3]], s)[0].text


def test_sampling_rules():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5]])
    greedy = SamplingConfig(temperature=0)
    assert sample_next(logits, greedy, g).item() == 0
    for s in (SamplingConfig(top_k=1), SamplingConfig(top_p=0.01), SamplingConfig(min_p=0.99)):
        assert all(sample_next(logits, s, g).item() == 0 for _ in range(20))
    two = {
        sample_next(logits, SamplingConfig(top_k=2, temperature=1), g).item() for _ in range(200)
    }
    assert two == {0, 1}
    seen = torch.tensor([[True, False, False, False]])
    penal = SamplingConfig(temperature=0, repetition_penalty=1.3)
    assert sample_next(logits, penal, g, seen).item() == 1  # 2.0 / 1.3 < 1.9
    a = [
        sample_next(logits, SamplingConfig(seed=1), torch.Generator().manual_seed(1)).item()
        for _ in range(5)
    ]
    b = [
        sample_next(logits, SamplingConfig(seed=1), torch.Generator().manual_seed(1)).item()
        for _ in range(5)
    ]
    assert a == b


def test_fork_prefills_once_and_matches_separate_prefills(model, tok):
    engine = Engine(model, tok)
    prompts = [[0, 5, 9, 11], [0, *range(30, 40)]]
    alone = [engine.generate([p], GREEDY)[0].ids for p in prompts]
    before = engine.prefilled
    forked = engine.generate(prompts, GREEDY, n=3)
    assert engine.prefilled - before == sum(len(p) for p in prompts)  # not 3x
    assert [c.ids for c in forked] == [alone[0]] * 3 + [alone[1]] * 3
    # sampled rows of one fork differ from each other, and repeat with the same seed
    s = SamplingConfig(temperature=50.0, seed=7, max_new_tokens=12)  # the head is sharp
    a = [c.ids for c in engine.generate([prompts[0]], s, n=4)]
    assert len({tuple(x) for x in a}) > 1
    assert a == [c.ids for c in engine.generate([prompts[0]], s, n=4)]


def test_two_threads_get_what_each_gets_alone(model, tok):
    engine = Engine(model, tok)
    jobs = [
        ([[0, 5, 9], [0, 200, 201, 202]], SamplingConfig(temperature=0, max_new_tokens=40)),
        ([[0, *range(60, 90)]], SamplingConfig(temperature=1.0, seed=3, max_new_tokens=60)),
    ]
    in_turn = [[c.ids for c in engine.generate(p, s)] for p, s in jobs]
    for _ in range(3):
        got = [None, None]

        def run(k, got=got):
            got[k] = [c.ids for c in engine.generate(*jobs[k])]

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == in_turn


def test_a_session_grows_like_one_long_prompt(model, tok):
    """Generate, append tokens, generate again: the same tokens as prefilling it all at once."""
    engine = Engine(model, tok)
    s = SamplingConfig(temperature=0, max_new_tokens=10)
    session = engine.session([0, 5, 9])
    first = [t for t, _, _ in session.stream(s)]
    session.append([17, 18, 19])
    second = [t for t, _, _ in session.stream(s)]
    whole = engine.generate([[0, 5, 9, *first, 17, 18, 19]], s)[0].ids
    assert first == engine.generate([[0, 5, 9]], s)[0].ids and second == whole
    assert session.ids == [0, 5, 9, *first, 17, 18, 19, *second[:-1]]
