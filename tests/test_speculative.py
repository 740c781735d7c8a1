"""Speculative decoding is exact: greedy tokens equal the target's alone, and sampled tokens
follow the target's distribution (a chi-square test against the exact joint distribution of
the first two tokens), whatever the draft."""

import itertools

import pytest
import torch
from scipy.stats import chisquare

from llmos.chat_format import render
from llmos.checkpoint import load_model
from llmos.infer.engine import Engine, SamplingConfig, next_token_probs
from llmos.infer.speculative import ModelDraft, PromptLookup, Speculative, SpeculativeError
from llmos.tokenizer import Tokenizer

from .conftest import CONVERSATION


def engine_of(d) -> Engine:
    return Engine(load_model(d), Tokenizer.load(d), "fp32")


@pytest.fixture(scope="module")
def target(assistant):
    return engine_of(assistant[1])


def prompt_of(e: Engine) -> list[int]:
    return render(e.tok, CONVERSATION[:3], add_generation_prompt=True)[0]


@pytest.mark.parametrize("draft_kind", ["model", "lookup"])
def test_greedy_tokens_equal_the_target_alone(target, base, draft_kind):
    s = SamplingConfig(temperature=0, max_new_tokens=40)
    prompt = prompt_of(target)
    alone = target.generate([prompt], s, stop_ids=frozenset())[0].ids
    draft = ModelDraft(engine_of(base)) if draft_kind == "model" else PromptLookup()
    spec = Speculative(target, draft, k=4)
    ids = [t for t, _, _ in spec.stream(prompt, s, stop_ids=frozenset())]
    assert ids == alone
    assert spec.drafted > 0 and spec.passes < len(ids)  # it did speculate, and saved passes


def test_greedy_tokens_equal_on_smollm2_with_prompt_lookup(smollm2):
    target = engine_of(smollm2)
    text = "Copy this list exactly: apples, pears, plums, cherries, figs, dates, limes."
    prompt = render(target.tok, [{"role": "user", "content": text}], add_generation_prompt=True)[0]
    s = SamplingConfig(temperature=0, max_new_tokens=30)
    alone = target.generate([prompt], s)[0].ids
    spec = Speculative(target, PromptLookup(), k=4)
    assert [t for t, _, _ in spec.stream(prompt, s)] == alone
    assert spec.accepted > 0  # the copied list was guessed right at least once


def exact_joint(e: Engine, prompt: list[int], s: SamplingConfig) -> dict:
    """P(t1, t2) of the target sampling alone, from its logits."""
    logits = e.model(torch.tensor([prompt]))[:, -1]
    p1 = next_token_probs(logits, s)[0]
    p1 = p1 / p1.sum()
    out = {}
    for t1 in torch.nonzero(p1).flatten().tolist():
        p2 = next_token_probs(e.model(torch.tensor([prompt + [t1]]))[:, -1], s)[0]
        p2 = p2 / p2.sum()
        for t2 in torch.nonzero(p2).flatten().tolist():
            out[(t1, t2)] = float(p1[t1] * p2[t2])
    return out


@pytest.mark.parametrize("draft_kind", ["model", "lookup"])
def test_sampled_tokens_follow_the_target_distribution(target, assistant, base, draft_kind):
    """1,500 two-token samples with k = 2 guesses (so both tokens pass through the acceptance
    rule): their joint frequencies against the target's exact probabilities. The draft's own
    distribution is checked to be far from the target's, so a rule that accepted everything
    would fail."""
    s = SamplingConfig(temperature=1.5, top_k=3, max_new_tokens=2)  # the global RNG: seeded
    torch.manual_seed(0)
    prompt = prompt_of(target)[:-6]  # mid-conversation: a spread-out next-token distribution
    want = exact_joint(target, prompt, s)
    draft_engine = engine_of(base)
    if draft_kind == "model":
        q = exact_joint(draft_engine, prompt, s)
        tv = sum(abs(want.get(c, 0) - q.get(c, 0)) for c in set(want) | set(q)) / 2
        assert tv > 0.2, f"the draft is too close to the target to test anything (TV {tv:.2f})"
        draft = ModelDraft(draft_engine)
    else:
        draft = PromptLookup(ngram=1)
    spec = Speculative(target, draft, k=2)
    counts = dict.fromkeys(want, 0)
    for _ in range(1500):
        ids = tuple(t for t, _, _ in spec.stream(prompt, s, stop_ids=frozenset()))
        assert ids in counts, f"{ids} has probability 0 under the target"
        counts[ids] += 1
    cells = sorted(want)
    total = sum(want.values())
    expected = [want[c] / total * 1500 for c in cells]
    p = chisquare([counts[c] for c in cells], expected).pvalue
    assert p > 1e-3, f"chi-square p = {p:.2g}: {counts} vs {want}"
    assert spec.drafted > 0


def test_a_draft_with_another_tokenizer_is_refused(target, smollm2):
    with pytest.raises(SpeculativeError, match="tokenizer"):
        Speculative(target, ModelDraft(engine_of(smollm2)))


def test_prompt_lookup_copies_the_latest_match():
    look = PromptLookup(ngram=3)
    ids = [1, 2, 3, 9, 9, 1, 2, 3, 7, 7, 7, 1, 2, 3]
    assert look.propose(ids, 2, None)[0] == [7, 7]  # the later of the two earlier matches
    assert look.propose([4, 5, 6], 2, None)[0] == []
    assert list(itertools.islice(look.propose(ids, 10, None)[0], 3)) == [7, 7, 7]


def test_sample_cli_speculates_and_prints_the_same_text(assistant, capsys):
    from llmos.cli import main

    args = [
        str(assistant[1]),
        "--prompt",
        "What is",
        "--temperature",
        "0",
        "--max-new-tokens",
        "30",
    ]
    assert main(["sample", *args]) == 0
    alone = capsys.readouterr().out
    assert main(["sample", *args, "--prompt-lookup"]) == 0
    out = capsys.readouterr()
    assert out.out == alone and "speculative:" in out.err


def test_the_server_speculates_single_requests_exactly(assistant, tmp_path):
    """The same requests to a server that speculates (prompt lookup) and to one that does not:
    the same tokens, streaming or not, tool calls banned (logit_bias) or allowed."""
    import openai

    from llmos.serve.api import ServeConfig, create_app

    from .conftest import start_server

    name, answers = assistant[1].resolve().name, []
    for lookup in (False, True):
        c = ServeConfig(db=str(tmp_path / f"{lookup}.sqlite"), prompt_lookup=lookup)
        url, srv = start_server(create_app(assistant[1], c))
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="none")
            got = []
            for tools in (None, [{"type": "function", "function": {"name": "calculator"}}]):
                kw = {"tools": tools} if tools else {}
                r = client.chat.completions.create(
                    model=name, messages=CONVERSATION[:1], temperature=0, max_tokens=40, **kw
                )
                got.append(r.choices[0].model_dump(exclude={"index"}))
                got.append(r.usage.completion_tokens)
            stream = client.chat.completions.create(
                model=name, messages=CONVERSATION[:1], temperature=0, max_tokens=40, stream=True
            )
            got.append("".join(ch.choices[0].delta.content or "" for ch in stream))
            answers.append(got)
        finally:
            srv.should_exit = True
    assert answers[0] == answers[1]
