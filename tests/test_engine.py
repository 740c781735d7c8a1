"""The engine against transformers, against itself one-by-one, and its sampling rules."""

import pytest
import torch

from llmos.checkpoint import save_model_dir
from llmos.infer.engine import Decoder, Engine, SamplingConfig, sample_next
from llmos.model import Transformer
from tests.test_model import tiny_config

GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def model():
    m = Transformer(tiny_config(vocab_size=400, max_position_embeddings=128))
    m.init_weights(seed=4)
    with torch.no_grad():  # sharper distributions than a fresh init: fewer near-ties
        m.lm_head.weight.mul_(20)
    return m.eval()


def test_prepared_logits_match_transformers(model, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    save_model_dir(model, tok, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 400, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(x).logits
        assert (Decoder(model, "fp32")(x) - ref).abs().max() <= 1e-4
        for dtype, tol in (("bf16", 0.05), ("int8", 0.08)):
            got = Decoder(model, dtype)(x).float()
            assert (got - ref).abs().max() / ref.abs().max() < tol, dtype


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
    engine.stop_ids = {free[0].ids[5]}  # a token the first row emits early
    stopped = engine.generate(prompts, GREEDY)
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
